"""Mining strategies: the common contract and each one's specific behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.flywheel.mining import (
    STRATEGIES,
    BudgetExceedsPool,
    MiningInputError,
    PoolState,
    make_strategy,
    select,
    uncertainty_scores,
)


def _blobs(n_per: int = 80, k: int = 4, d: int = 8, seed: int = 0, spread: float = 0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4.0, size=(k, d))
    y = np.repeat(np.arange(k), n_per)
    x = centres[y] + rng.normal(0, spread, size=(y.size, d))
    return x.astype(np.float32), y, centres


def _softmax_probs(x: np.ndarray, centres: np.ndarray, temp: float = 2.0) -> np.ndarray:
    d = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    z = -d / temp
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def pool():
    x, y, centres = _blobs()
    rng = np.random.default_rng(5)
    labeled = np.sort(rng.choice(x.shape[0], size=40, replace=False))
    rest = np.setdiff1d(np.arange(x.shape[0]), labeled)
    excluded = rest[:15]
    probs = _softmax_probs(x, centres, temp=20.0)
    return x, y, labeled, excluded, probs


@pytest.mark.parametrize("name", STRATEGIES)
def test_contract_exact_budget_distinct_unlabeled_deterministic_with_reasons(name, pool):
    x, y, labeled, excluded, probs = pool
    state = PoolState(
        embeddings=x, labeled=labeled, labels=y[labeled], excluded=excluded, probs=probs
    )
    a = select(name, state, 17, seed=3)
    b = select(name, state, 17, seed=3)
    assert len(a) == 17
    assert len(np.unique(a.indices)) == 17
    assert not np.isin(a.indices, labeled).any()
    assert not np.isin(a.indices, excluded).any()
    assert np.array_equal(a.indices, b.indices)
    assert a.reasons == b.reasons
    assert all(isinstance(r, str) and len(r) > 5 for r in a.reasons)
    assert a.scores.shape == (17,)
    assert select(name, state, 0, seed=3).indices.size == 0


@pytest.mark.parametrize("name", STRATEGIES)
def test_budget_larger_than_free_pool_is_refused(name, pool):
    x, _, labeled, excluded, probs = pool
    state = PoolState(embeddings=x, labeled=labeled, excluded=excluded, probs=probs)
    free = x.shape[0] - labeled.size - excluded.size
    with pytest.raises(BudgetExceedsPool, match=str(free)):
        make_strategy(name)(state, free + 1, np.random.default_rng(0))


@pytest.mark.parametrize("name", STRATEGIES)
def test_cold_start_without_model_or_labels(name):
    x, _, _ = _blobs(n_per=30)
    sel = select(name, PoolState(embeddings=x), 6, seed=1)
    assert len(np.unique(sel.indices)) == 6


def test_random_differs_across_seeds():
    x, _, _ = _blobs()
    st = PoolState(embeddings=x)
    assert not np.array_equal(
        select("random", st, 10, 0).indices, select("random", st, 10, 1).indices
    )


def test_unknown_strategy_and_bad_inputs():
    x, _, _ = _blobs(n_per=10)
    with pytest.raises(MiningInputError, match="unknown strategy 'nope'"):
        make_strategy("nope")
    with pytest.raises(MiningInputError, match="bad parameters"):
        make_strategy("kcenter", wrong=1)
    with pytest.raises(MiningInputError, match="float32"):
        PoolState(embeddings=x.astype(np.float64))
    with pytest.raises(MiningInputError, match="outside"):
        PoolState(embeddings=x, labeled=[x.shape[0]])
    with pytest.raises(MiningInputError, match="empty"):
        PoolState(embeddings=np.zeros((0, 4), np.float32))
    with pytest.raises(MiningInputError, match="probs"):
        PoolState(embeddings=x, probs=np.zeros((3, 2), np.float32))


# ---------------------------------------------------------------- uncertainty


def _probs_with_known_uncertain(n: int = 300, c: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    p = np.full((n, c), 0.01, dtype=np.float32)
    p[np.arange(n), rng.integers(0, c, n)] = 1.0 - 0.01 * (c - 1)
    hot = np.array([7, 42, 199, 250])
    p[hot] = 1.0 / c  # maximally uncertain by every measure
    p[13] = [0.5, 0.5, 0, 0, 0]  # zero margin but low entropy vs uniform
    return p, hot


@pytest.mark.parametrize("kind", ["entropy", "least_confidence"])
def test_uncertainty_picks_the_most_uncertain(kind):
    p, hot = _probs_with_known_uncertain()
    x = np.random.default_rng(0).normal(size=(p.shape[0], 4)).astype(np.float32)
    sel = select(kind, PoolState(embeddings=x, probs=p), 4, seed=0)
    assert set(sel.indices) == set(hot)
    s = uncertainty_scores(p, kind)
    assert np.isclose(sel.scores.min(), s.max())
    assert all("top" in r for r in sel.reasons)


def test_entropy_reason_names_the_value_and_rank():
    p, _ = _probs_with_known_uncertain()
    x = np.zeros((p.shape[0], 2), np.float32)
    sel = select("entropy", PoolState(embeddings=x, probs=p), 1, seed=0)
    assert sel.reasons[0].startswith(f"entropy {np.log(5):.2f} (top 0.33%")


def test_margin_prefers_zero_margin():
    p, hot = _probs_with_known_uncertain()
    x = np.zeros((p.shape[0], 2), np.float32)
    sel = select("margin", PoolState(embeddings=x, probs=p), 5, seed=0)
    assert set(sel.indices) == set(hot) | {13}


def test_uncertainty_without_model_says_random_start():
    x, _, _ = _blobs(n_per=10)
    sel = select("entropy", PoolState(embeddings=x), 3, seed=0)
    assert sel.reasons == ["no model yet: random start"] * 3


# ---------------------------------------------------------------- diversity, typicality, coverage


def test_kcenter_picks_far_points():
    rng = np.random.default_rng(0)
    blob = rng.normal(0, 0.2, size=(300, 6)).astype(np.float32)
    far = np.array(
        [[10, 0, 0, 0, 0, 0], [0, -10, 0, 0, 0, 0], [0, 0, 0, 9, 9, 0]], dtype=np.float32
    )
    x = np.concatenate([blob, far])
    st = PoolState(embeddings=x, labeled=np.arange(20))
    sel = select("kcenter", st, 3, seed=0)
    assert set(sel.indices) == {300, 301, 302}
    assert sel.scores[0] > 9.0
    assert sel.reasons[0].startswith("farthest from the labeled/queued set")


def test_typiclust_picks_the_dense_cores_not_the_noise():
    rng = np.random.default_rng(1)
    c = np.array([[5.0, 5.0], [-5.0, -5.0]])
    dense = np.concatenate(
        [c[0] + rng.normal(0, 0.3, (200, 2)), c[1] + rng.normal(0, 0.3, (200, 2))]
    )
    noise = rng.uniform(-12, 12, (40, 2))
    x = np.concatenate([dense, noise]).astype(np.float32)
    sel = select("typiclust", PoolState(embeddings=x), 2, seed=0)
    picked = x[sel.indices]
    near = np.linalg.norm(picked[:, None, :] - c[None], axis=-1).min(axis=1)
    assert (near < 0.3).all()  # the most typical point sits in the core
    assert len({int(np.argmin(np.linalg.norm(c - p, axis=1))) for p in picked}) == 2
    assert "most typical sample of cluster" in sel.reasons[0]


def test_typiclust_prefers_clusters_without_labels():
    x, y, _ = _blobs(n_per=60, k=3, d=4)
    labeled = np.flatnonzero(y == 0)[:5]
    sel = select("typiclust", PoolState(embeddings=x, labeled=labeled), 2, seed=0)
    assert set(y[sel.indices]) == {1, 2}


def test_probcover_covers_every_cluster_first():
    x, y, _ = _blobs(n_per=60, k=5, d=4, spread=0.2)
    sel = select("probcover", PoolState(embeddings=x, n_classes=5), 5, seed=0)
    assert set(y[sel.indices]) == {0, 1, 2, 3, 4}
    assert sel.reasons[0].startswith("covers ")


def test_badge_prefers_uncertain_points_and_spreads_them():
    x, y, centres = _blobs(n_per=100, k=3, d=4)
    p = np.zeros((x.shape[0], 3), np.float32)
    p[np.arange(x.shape[0]), y] = 1.0  # confident: zero gradient embedding
    unsure = np.flatnonzero(np.arange(x.shape[0]) % 10 == 0)
    p[unsure] = [0.34, 0.33, 0.33]
    sel = select("badge", PoolState(embeddings=x, probs=p), 6, seed=0)
    assert np.isin(sel.indices, unsure).all()
    assert len(set(y[sel.indices])) == 3  # diverse across clusters
    assert "BADGE" in sel.reasons[0]


# ---------------------------------------------------------------- auto and rare events


def test_auto_switches_regime_by_labels_per_class():
    x, y, centres = _blobs(n_per=100, k=4)
    probs = _softmax_probs(x, centres, temp=20.0)
    few = select("auto", PoolState(embeddings=x, labeled=np.arange(0, 400, 50), probs=probs), 10)
    assert sum("[few labels (2.0/class): typicality]" in r for r in few.reasons) == 9
    assert sum("rare-event quota" in r for r in few.reasons) == 1
    lab = np.arange(0, 400, 4)  # 100 labels, 25 per class
    many = select("auto", PoolState(embeddings=x, labeled=lab, labels=y[lab], probs=probs), 10)
    assert sum("[many labels (25.0/class): uncertainty+diversity]" in r for r in many.reasons) == 9
    assert sum("rare-event quota" in r for r in many.reasons) == 1
    # balanced labels: no class is short, so no rare-class quota
    assert not any("rare-class quota" in r for r in many.reasons)
    cov = select(
        "auto",
        PoolState(embeddings=x, labeled=np.arange(0, 400, 50), probs=probs),
        10,
        low="probcover",
    )
    assert sum("[few labels (2.0/class): coverage]" in r for r in cov.reasons) == 9
    with pytest.raises(MiningInputError, match="low must be"):
        make_strategy("auto", low="badge")


def _one_in_a_thousand(n_common: int = 19_980, n_rare: int = 20, d: int = 16, seed: int = 0):
    """8 common classes and a rare class 9 at 1/1000 that sits *between* two
    common clusters (not an outlier: k-center alone does not single it out)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3.0, size=(8, d))
    y = np.concatenate([rng.integers(0, 8, size=n_common), np.full(n_rare, 8)])
    rare_centre = (centres[0] + centres[1]) / 2
    all_c = np.vstack([centres, rare_centre])
    x = all_c[y] + rng.normal(0, 0.5, size=(y.size, d))
    perm = rng.permutation(y.size)
    return x[perm].astype(np.float32), y[perm], all_c


def test_auto_rare_class_quota_labels_a_found_rare_class_up():
    x, y, all_c = _one_in_a_thousand()
    rare = np.flatnonzero(y == 8)
    rng = np.random.default_rng(1)
    labeled = np.concatenate(
        [np.concatenate([rng.choice(np.flatnonzero(y == k), 10, replace=False) for k in range(8)]),
         rare[:1]]
    )  # fmt: skip
    # a model trained on those labels: knows the rare class, but is seldom sure of it
    probs = _softmax_probs(x, all_c, temp=8.0)
    names = [f"common{k}" for k in range(8)] + ["fire"]
    st = PoolState(embeddings=x, labeled=labeled, labels=y[labeled], probs=probs, class_names=names)
    sel = select("auto", st, 20, seed=0)
    assert any(r.startswith("rare-class quota: 'fire' has 1 labels") for r in sel.reasons)
    quota = [i for i, r in zip(sel.indices, sel.reasons, strict=True) if "rare-class quota" in r]
    assert len(quota) == 4  # class 9 has 1 label, half the mean (9.0) is 4.5: 4 more
    assert np.isin(quota, rare).all()
    assert any("nearest unlabeled neighbour" in r for r in sel.reasons)
    assert any("model gives it p=" in r for r in sel.reasons)
    # margin alone spends the budget on the boundary of the common classes
    assert np.isin(select("margin", st, 20, seed=0).indices, rare).sum() < 4


def test_simulated_rounds_find_a_one_in_a_thousand_class_within_budget():
    from cloud.flywheel.mining import simulate

    x, y, _ = _one_in_a_thousand(n_common=4_995, n_rare=5)
    found: dict[tuple[str, int], int] = {}

    def on_round(name, seed, budget, revealed, acc):
        found[(name, seed)] = found.get((name, seed), 0) + int((revealed == 8).sum() > 0)

    simulate(x, y, [20, 40, 80], ["auto", "random"], seeds=3, on_round=on_round)
    # auto has the rare class labeled within 80 labels in every seed; random
    # (P ≈ 1 - C(3996, 80) / C(4000, 80) ≈ 8% per seed) does not
    assert all(found[("auto", s)] >= 1 for s in range(3))
    assert sum(found[("random", s)] >= 1 for s in range(3)) <= 1


def _rare_pool(n: int = 100_000, n_rare: int = 10, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3.0, size=(8, d))
    y = rng.integers(0, 8, size=n)
    x = centres[y] + rng.normal(0, 0.6, size=(n, d))
    rare = np.sort(rng.choice(n, size=n_rare, replace=False))
    x[rare] = rng.normal(0, 1.0, size=d) * 0 + 25.0 + rng.normal(0, 0.3, size=(n_rare, d))
    y[rare] = 8
    return x.astype(np.float32), y, rare, centres


def test_rare_class_at_one_in_ten_thousand_is_found_by_auto_not_random():
    x, y, rare, centres = _rare_pool()
    budget = 20
    for seed in range(3):
        sel = select("auto", PoolState(embeddings=x, n_classes=9), budget, seed=seed)
        assert np.isin(sel.indices, rare).any(), f"auto missed the rare class (seed {seed})"
        hit = sel.reasons[int(np.flatnonzero(np.isin(sel.indices, rare))[0])]
        assert "novel" in hit
    # random: P(hit) = 1 - C(99990, 20) / C(100000, 20) ≈ 0.2% per draw
    hits = sum(
        np.isin(select("random", PoolState(embeddings=x), budget, seed=s).indices, rare).any()
        for s in range(10)
    )
    assert hits == 0


def test_rare_class_found_with_a_model_that_never_saw_it():
    x, y, rare, centres = _rare_pool(n=30_000, n_rare=3)
    common = np.flatnonzero(y < 8)
    labeled = common[:400]
    # a model of the 8 common classes: confident everywhere, also (wrongly) on the rare points
    d = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
    p = np.exp(-(d - d.min(axis=1, keepdims=True)) / 4.0)
    probs = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    st = PoolState(embeddings=x, labeled=labeled, labels=y[labeled], probs=probs)
    assert np.isin(select("auto", st, 20, seed=0).indices, rare).any()
    assert not np.isin(select("entropy", st, 20, seed=0).indices, rare).any()


# ---------------------------------------------------------------- memmap pools


@pytest.mark.parametrize("name", ["auto", "kcenter", "typiclust", "entropy", "badge", "probcover"])
def test_memmap_pool_gives_the_same_selection(tmp_path, name, pool):
    x, y, labeled, excluded, probs = pool
    np.save(tmp_path / "emb.npy", x)
    np.save(tmp_path / "probs.npy", probs)
    xm = np.load(tmp_path / "emb.npy", mmap_mode="r")
    pm = np.load(tmp_path / "probs.npy", mmap_mode="r")
    assert isinstance(xm, np.memmap)
    a = select(name, PoolState(embeddings=x, labeled=labeled, probs=probs), 9, seed=2)
    b = select(name, PoolState(embeddings=xm, labeled=labeled, probs=pm), 9, seed=2)
    assert np.array_equal(a.indices, b.indices)


def test_approximate_kcenter_on_a_large_pool_keeps_outliers(tmp_path):
    # above the exact threshold: candidates are a sample plus outliers
    rng = np.random.default_rng(0)
    n = 60_000
    x = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(n, 8))
    x[:] = rng.normal(0, 1.0, size=(n, 8))
    x[12_345] = 40.0
    x.flush()
    xm = np.load(tmp_path / "big.npy", mmap_mode="r")
    sel = make_strategy("kcenter", exact_below=10_000)(
        PoolState(embeddings=xm, labeled=[0]), 5, np.random.default_rng(0)
    )
    assert sel.indices[0] == 12_345
    assert len(np.unique(sel.indices)) == 5

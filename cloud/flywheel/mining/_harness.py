"""The simulation harness: replay active learning with an oracle on a labeled set.

``simulate(features, labels, budgets, strategies, seeds)``:

1. a stratified test split (``test_fraction``, fixed ``split_seed``) is held
   out; the rest is the pool;
2. ``full_supervision`` = test accuracy when every pool label is used;
3. for every strategy and seed, starting from no labels, each budget ``b`` is
   the *total* number of labels at that point: the strategy picks
   ``b - |labeled|`` new samples, the oracle reveals their labels, the model is
   retrained from scratch (``train_eval``) and its test accuracy recorded; the
   model's pool probabilities feed the next round's strategy;
4. the result is ``{"full_supervision", "curves", "std", "seconds"}`` with
   curves and std keyed ``strategy -> str(budget) -> accuracy``.

``train_eval`` is pluggable: ``train_eval(x_lab, y_lab, x_test, y_test, x_pool,
n_classes, seed) -> TrainEvalResult(accuracy, pool_probs)``. The default,
:func:`flywheel_head_train_eval`, is the Train button's own head procedure
(``cloud.flywheel._train.train_head``: class-balanced L2 logistic regression on
standardised frozen embeddings), so a simulation predicts what the Train button
will do. :func:`logistic_train_eval` (sklearn, features standardised with the
*pool's* statistics, no class weights) is the textbook alternative; both are in
:data:`TRAINERS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from ._strategies import make_strategy
from ._types import BudgetExceedsPool, MiningInputError, PoolState


class TrainEvalResult(NamedTuple):
    accuracy: float
    pool_probs: np.ndarray | None  # [N_pool, n_classes]


TrainEval = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int], TrainEvalResult
]


def logistic_train_eval(
    x_lab: np.ndarray,
    y_lab: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    x_pool: np.ndarray,
    n_classes: int,
    seed: int,
    c: float = 1.0,
) -> TrainEvalResult:
    """Logistic regression on pool-standardised frozen features."""
    from sklearn.linear_model import LogisticRegression

    mu = x_pool.mean(axis=0)
    sd = x_pool.std(axis=0) + 1e-6
    z_lab, z_test, z_pool = ((a - mu) / sd for a in (x_lab, x_test, x_pool))
    present = np.unique(y_lab)
    probs = np.zeros((x_pool.shape[0], n_classes), dtype=np.float32)
    if present.size == 1:  # one class seen: the model can only say that class
        acc = float((y_test == present[0]).mean())
        probs[:, present[0]] = 1.0
        return TrainEvalResult(acc, probs)
    clf = LogisticRegression(C=c, max_iter=1000, random_state=seed)
    clf.fit(z_lab, y_lab)
    acc = float((clf.predict(z_test) == y_test).mean())
    probs[:, clf.classes_] = clf.predict_proba(z_pool)
    return TrainEvalResult(acc, probs)


def flywheel_head_train_eval(
    x_lab: np.ndarray,
    y_lab: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    x_pool: np.ndarray,
    n_classes: int,
    seed: int,
) -> TrainEvalResult:
    """The Train button's frozen-embedding head (:func:`cloud.flywheel._train.train_head`:
    class-balanced L2 logistic regression by full-batch LBFGS on standardised
    embeddings, default :class:`cloud.flywheel.TrainConfig`)."""
    from cloud.flywheel._train import TrainConfig, train_head

    present = np.unique(y_lab)
    probs = np.zeros((x_pool.shape[0], n_classes), dtype=np.float32)
    if present.size == 1:
        probs[:, present[0]] = 1.0
        return TrainEvalResult(float((y_test == present[0]).mean()), probs)
    remap = np.searchsorted(present, y_lab)
    w, b = train_head(x_lab, remap.astype(np.int64), present.size, TrainConfig(seed=seed))

    def proba(x: np.ndarray) -> np.ndarray:
        z = x @ w.T + b
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    acc = float((present[proba(x_test).argmax(axis=1)] == y_test).mean())
    probs[:, present] = proba(x_pool)
    return TrainEvalResult(acc, probs)


#: name -> train_eval, for the CLI's ``--trainer``
TRAINERS: dict[str, TrainEval] = {
    "flywheel-head": flywheel_head_train_eval,
    "logistic": logistic_train_eval,
}


def check_budgets(budgets: Sequence[int], pool_size: int) -> list[int]:
    b = [int(v) for v in budgets]
    if not b:
        raise MiningInputError("no budgets given", field="budgets")
    if any(v <= 0 for v in b):
        raise MiningInputError(f"budgets must be positive, got {b}", field="budgets")
    if any(v2 <= v1 for v1, v2 in zip(b, b[1:], strict=False)):
        raise MiningInputError(f"budgets must be strictly increasing, got {b}", field="budgets")
    if b[-1] > pool_size:
        raise BudgetExceedsPool(
            f"budget {b[-1]} is larger than the pool ({pool_size} samples after holding out "
            "the test split)",
            field="budgets",
        )
    return b


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(pool indices, test indices), stratified by class, fixed seed."""
    from sklearn.model_selection import train_test_split

    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise MiningInputError(
            f"only one class ({classes[0]!r}): a learning curve needs at least two",
            field="labels",
        )
    if counts.min() < 2:
        bad = classes[counts < 2]
        raise MiningInputError(
            f"class {bad[0]!r} has a single sample; the stratified test split needs at "
            "least 2 per class",
            field="labels",
        )
    idx = np.arange(y.size)
    n_test = max(int(round(test_fraction * y.size)), classes.size)
    pool, test = train_test_split(idx, test_size=n_test, random_state=seed, stratify=y)
    return np.sort(pool), np.sort(test)


def simulate(
    features: np.ndarray,
    labels: Sequence,
    budgets: Sequence[int],
    strategies: Sequence[str],
    seeds: int | Sequence[int] = 3,
    train_eval: TrainEval = flywheel_head_train_eval,
    *,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    strategy_cfg: dict[str, dict] | None = None,
    progress: Callable[[str], None] | None = None,
    on_round: Callable[[str, int, int, np.ndarray, float], None] | None = None,
) -> dict:
    """Run the oracle loop; return ``{"full_supervision", "curves", "std", "seconds"}``.

    ``on_round(strategy, seed, budget, revealed_labels, accuracy)`` (optional)
    sees the original labels revealed so far after every round (e.g. to count
    when a rare class is first found)."""
    t0 = time.perf_counter()
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise MiningInputError("features must be [N, D]", field="features")
    lab = np.asarray(labels)
    if lab.shape[0] != x.shape[0]:
        raise MiningInputError(
            f"{x.shape[0]} feature rows but {lab.shape[0]} labels", field="labels"
        )
    if not strategies:
        raise MiningInputError("no strategy given", field="strategy")
    for name in strategies:
        make_strategy(name, **(strategy_cfg or {}).get(name, {}))
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise MiningInputError("seeds must be at least 1", field="seeds")
    classes, y = np.unique(lab, return_inverse=True)
    n_classes = classes.size
    pool, test = stratified_split(y, test_fraction, split_seed)
    b = check_budgets(budgets, pool.size)
    xp, yp, xt, yt = x[pool], y[pool], x[test], y[test]

    full = train_eval(xp, yp, xt, yt, xp, n_classes, split_seed).accuracy
    if progress:
        progress(f"full supervision ({pool.size} labels): {full:.4f}")
    acc: dict[str, np.ndarray] = {}
    for name in strategies:
        strat = make_strategy(name, **(strategy_cfg or {}).get(name, {}))
        table = np.zeros((len(seed_list), len(b)))
        for si, seed in enumerate(seed_list):
            labeled = np.zeros(0, dtype=np.int64)
            probs = None
            for r, budget in enumerate(b):
                state = PoolState(
                    embeddings=xp,
                    labeled=labeled,
                    labels=yp[labeled],
                    probs=probs,
                    n_classes=n_classes,
                )
                sel = strat(state, budget - labeled.size, np.random.default_rng([seed, r]))
                labeled = np.concatenate([labeled, sel.indices])
                res = train_eval(xp[labeled], yp[labeled], xt, yt, xp, n_classes, seed)
                probs = res.pool_probs
                table[si, r] = res.accuracy
                if on_round:
                    on_round(name, seed, budget, classes[yp[labeled]], res.accuracy)
            if progress:
                progress(f"{name} seed {seed}: " + " ".join(f"{a:.3f}" for a in table[si]))
        acc[name] = table
    return {
        "full_supervision": float(full),
        "curves": {
            n: {str(bb): float(acc[n][:, i].mean()) for i, bb in enumerate(b)} for n in strategies
        },
        "std": {
            n: {str(bb): float(acc[n][:, i].std()) for i, bb in enumerate(b)} for n in strategies
        },
        "seconds": float(time.perf_counter() - t0),
    }


def curve_summary(result: dict, fraction: float = 0.9) -> dict[str, dict]:
    """Per strategy: ``aulc`` (mean accuracy over the budget axis, trapezoid,
    normalised to [0, 1]) and ``labels_to_target`` (labels needed to reach
    ``fraction`` × full supervision, linearly interpolated between budgets;
    ``None`` when never reached)."""
    target = fraction * result["full_supervision"]
    out: dict[str, dict] = {}
    for name, curve in result["curves"].items():
        bs = np.asarray([int(k) for k in curve], dtype=np.float64)
        accs = np.asarray(list(curve.values()), dtype=np.float64)
        if bs.size > 1:
            aulc = float(np.trapezoid(accs, bs) / (bs[-1] - bs[0]))
        else:
            aulc = float(accs[0])
        reach = None
        for i, a in enumerate(accs):
            if a >= target:
                if i == 0:
                    reach = float(bs[0])
                else:
                    a0, b0 = accs[i - 1], bs[i - 1]
                    reach = float(b0 + (target - a0) / (a - a0) * (bs[i] - b0))
                break
        out[name] = {"aulc": aulc, "labels_to_target": reach}
    return out


def format_table(result: dict, fraction: float = 0.9) -> str:
    """A plain-text table: mean ± std per budget, AULC, labels to 90%."""
    summ = curve_summary(result, fraction)
    names = list(result["curves"])
    budgets = list(next(iter(result["curves"].values())))
    head = ["strategy"] + [f"{b} labels" for b in budgets] + ["AULC", f"labels→{fraction:.0%}"]
    rows = []
    for n in names:
        cells = [n]
        for b in budgets:
            cells.append(f"{result['curves'][n][b]:.3f}±{result['std'][n][b]:.3f}")
        cells.append(f"{summ[n]['aulc']:.3f}")
        r = summ[n]["labels_to_target"]
        cells.append(f"{r:.0f}" if r is not None else f">{budgets[-1]}")
        rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    fs = result["full_supervision"]
    return "\n".join(
        [
            line,
            sep,
            *body,
            "",
            f"full supervision: {fs:.3f}   "
            f"target {fraction:.0%} of it: {fraction * fs:.3f}   seconds: {result['seconds']:.1f}",
        ]
    )


def plot_curves(result: dict, path) -> None:
    """Learning curves (mean ± std band) and the full-supervision line, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, curve in result["curves"].items():
        bs = [int(k) for k in curve]
        m = np.asarray(list(curve.values()))
        s = np.asarray(list(result["std"][name].values()))
        ax.plot(bs, m, marker="o", label=name)
        ax.fill_between(bs, m - s, m + s, alpha=0.15)
    ax.axhline(result["full_supervision"], color="k", ls="--", lw=1, label="full supervision")
    ax.set_xscale("log")
    ticks = [int(k) for k in next(iter(result["curves"].values()))]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labels")
    ax.set_ylabel("test accuracy")
    ax.set_title("learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)

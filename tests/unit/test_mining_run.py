"""Resumable mining runs, batched scoring, the hand-off to annotation (never twice)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cloud.flywheel.mining import (
    AnnotationBatch,
    LinearHead,
    MiningInputError,
    MiningRun,
    PoolState,
    RunConflict,
    annotation_batch,
    batched_probs,
    dedupe_against,
    queued_positions,
    select,
)


class Interrupted(Exception):
    pass


@pytest.fixture
def pool(tmp_path):
    rng = np.random.default_rng(0)
    n, d, c = 5_000, 8, 4
    x = rng.normal(size=(n, d)).astype(np.float32)
    np.save(tmp_path / "emb.npy", x)
    head = LinearHead(rng.normal(size=(d, c)), rng.normal(size=c))
    return np.load(tmp_path / "emb.npy", mmap_mode="r"), head


def test_linear_head_gives_probabilities(pool):
    x, head = pool
    p = head(np.asarray(x[:10]))
    assert p.shape == (10, 4)
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(MiningInputError, match="head"):
        LinearHead(np.zeros((3, 2)), np.zeros(3))


def test_batched_probs_match_one_shot_and_skip_done_batches(pool):
    x, head = pool
    full = head(np.asarray(x))
    done = np.zeros(10, dtype=bool)
    done[[0, 4]] = True
    out = np.full((x.shape[0], 4), -1.0, dtype=np.float32)
    seen = []
    batched_probs(x, head, batch=500, out=out, done=done, on_batch=lambda b, n: seen.append(b))
    assert seen == [1, 2, 3, 5, 6, 7, 8, 9]
    assert done.all()
    assert (out[:500] == -1).all() and (out[2000:2500] == -1).all()  # skipped, untouched
    assert np.allclose(out[500:2000], full[500:2000], atol=1e-6)


def _run(tmp, x, head, **kw):
    return MiningRun(
        tmp,
        x,
        budget=25,
        strategy=kw.pop("strategy", "auto"),
        seed=7,
        head=head,
        labeled=range(0, 5_000, 50),
        batch=500,
        **kw,
    )


def test_interrupted_run_resumes_where_it_stopped_and_selects_the_same(tmp_path, pool):
    x, head = pool
    reference = _run(tmp_path / "ref", x, head).run()

    work = tmp_path / "run"
    calls: list[int] = []

    def die_after_three(b, n):
        calls.append(b)
        if len(calls) == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        _run(work, x, head).run(on_batch=die_after_three)
    st = _run(work, x, head).status()
    assert st == {"scored_batches": 3, "n_batches": 10, "finished": False}
    assert not (work / "selection.json").exists()

    resumed: list[int] = []
    sel = _run(work, x, head).run(on_batch=lambda b, n: resumed.append(b))
    assert resumed == [3, 4, 5, 6, 7, 8, 9]  # only what was left
    assert np.array_equal(sel.indices, reference.indices)
    assert sel.reasons == reference.reasons
    assert _run(work, x, head).status()["finished"]

    again: list[int] = []
    sel2 = _run(work, x, head).run(on_batch=lambda b, n: again.append(b))
    assert again == []  # finished runs are not redone
    assert np.array_equal(sel2.indices, sel.indices)
    saved = json.loads((work / "selection.json").read_text())
    assert saved["indices"] == [int(i) for i in sel.indices]


def test_a_different_run_in_the_same_directory_is_refused(tmp_path, pool):
    x, head = pool
    _run(tmp_path, x, head).run()
    before = (tmp_path / "selection.json").read_bytes()
    with pytest.raises(RunConflict, match="different mining run"):
        _run(tmp_path, x, head, strategy="kcenter").run()
    assert (tmp_path / "selection.json").read_bytes() == before


def test_run_rejects_bad_input_before_compute(tmp_path, pool):
    x, head = pool
    with pytest.raises(MiningInputError, match="unknown strategy"):
        _run(tmp_path, x, head, strategy="best")
    wrong = LinearHead(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(MiningInputError, match="3-d embeddings"):
        _run(tmp_path, x, wrong)
    assert not (tmp_path / "run.json").exists()


def test_run_without_model_needs_no_scoring(tmp_path, pool):
    x, _ = pool
    sel = MiningRun(tmp_path, x, budget=10, strategy="typiclust", seed=0).run()
    assert len(set(sel.indices.tolist())) == 10
    assert not (tmp_path / "probs.f32").exists()


def test_run_with_precomputed_probs_selects_by_them_and_keys_the_checkpoint(tmp_path, pool):
    x, head = pool
    n = x.shape[0]
    probs = np.zeros((n, 3), dtype=np.float32)
    probs[:, 0] = 1.0
    hot = np.array([17, 1234, 4321])
    probs[hot] = 1.0 / 3  # the only uncertain rows, e.g. from a model's ONNX on images
    np.save(tmp_path / "probs.npy", probs)
    pm = np.load(tmp_path / "probs.npy", mmap_mode="r")
    work = tmp_path / "run"
    run = MiningRun(work, x, budget=3, strategy="margin", probs=pm, probs_key="onnx:abc")
    sel = run.run()
    assert sorted(sel.indices.tolist()) == hot.tolist()
    spec = json.loads((work / "run.json").read_text())
    assert spec["head"] == "onnx:abc" and spec["n_classes"] == 3
    assert not (work / "probs.f32").exists()  # nothing scored or copied
    assert run.status() == {"scored_batches": 0, "n_batches": 0, "finished": True}
    again = MiningRun(work, x, budget=3, strategy="margin", probs=pm, probs_key="onnx:abc")
    assert np.array_equal(again.run().indices, sel.indices)
    with pytest.raises(RunConflict, match="different mining run"):
        MiningRun(work, x, budget=3, strategy="margin", probs=pm, probs_key="onnx:other").run()


def test_precomputed_probs_are_checked(tmp_path, pool):
    x, head = pool
    good = np.full((x.shape[0], 2), 0.5, dtype=np.float32)
    with pytest.raises(MiningInputError, match="not both"):
        MiningRun(tmp_path, x, budget=3, head=head, probs=good, probs_key="k")
    with pytest.raises(MiningInputError, match="shape"):
        MiningRun(tmp_path, x, budget=3, probs=good[:10], probs_key="k")
    with pytest.raises(MiningInputError, match="probs_key"):
        MiningRun(tmp_path, x, budget=3, probs=good)
    assert not (tmp_path / "run.json").exists()


def test_pool_state_keeps_each_label_with_its_index():
    x = np.zeros((10, 2), dtype=np.float32)
    st = PoolState(embeddings=x, labeled=[7, 2, 5, 2], labels=[1, 0, 3, 0])
    assert st.labeled.tolist() == [2, 5, 7]
    assert st.labels.tolist() == [0, 3, 1]


def test_dedupe_against_drops_queued_and_repeats_keeping_order():
    keep = dedupe_against(["a", "b", "c", "b", "d", "a"], queued_ids={"c"})
    assert keep.tolist() == [True, True, False, False, True, False]
    assert dedupe_against([], ["x"]).tolist() == []


def test_annotation_batch_never_queues_twice_and_carries_reasons_and_prelabels(pool):
    x, head = pool
    ids = [f"s{i:05d}" for i in range(x.shape[0])]
    probs = head(np.asarray(x))
    queued = {ids[i] for i in range(0, 5_000, 3)}
    excl = queued_positions(ids, queued)
    assert excl.size == len(queued)
    st = PoolState(embeddings=x, probs=probs, excluded=excl)
    sel = select("entropy", st, 30, seed=0)
    batch = annotation_batch(sel, ids, queued, probs, ["car", "bus", "person", "bike"])
    assert isinstance(batch, AnnotationBatch)
    assert len(batch.sample_ids) == 30  # excluded up front: the budget is still filled
    assert not set(batch.sample_ids) & queued
    assert batch.reasons == sel.reasons
    assert all(
        p is not None and p.label in {"car", "bus", "person", "bike"} for p in batch.prelabels
    )
    i0 = sel.indices[0]
    assert batch.prelabels[0].score == pytest.approx(float(probs[i0].max()), abs=1e-6)

    # a selection made without knowing the queue still never re-queues
    blind = select("entropy", PoolState(embeddings=x, probs=probs), 30, seed=0)
    b2 = annotation_batch(blind, ids, queued, probs)
    assert not set(b2.sample_ids) & queued
    assert len(b2.sample_ids) == len(b2.reasons) == len(b2.prelabels) < 30
    assert annotation_batch(blind, ids).prelabels == [None] * 30


@pytest.mark.integration
@pytest.mark.slow
def test_ray_fan_out_gives_the_same_probs_and_selection(tmp_path, pool):
    ray = pytest.importorskip("ray")
    x, head = pool
    try:
        local = batched_probs(x, head, batch=500)
        fanned = batched_probs(x, head, batch=500, use_ray=True, ray_tasks=3)
        assert np.array_equal(local, fanned)
        a = _run(tmp_path / "local", x, head).run()
        b = _run(tmp_path / "ray", x, head, use_ray=True).run()
        assert np.array_equal(a.indices, b.indices)
        inmem = batched_probs(np.asarray(x), head, batch=700, use_ray=True)
        assert np.array_equal(inmem, local)
    finally:
        ray.shutdown()

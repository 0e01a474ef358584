"""A mining round on a catalog dataset (``cloud.flywheel._mine``): a trained
model scores the pool and the field hard cases, a strategy picks ``budget``
samples and an annotation task opens with pre-labels and reasons; nothing is
queued twice, an interrupted run resumes, bad input is refused before compute."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import func, select

from cloud.catalog import Catalog
from cloud.catalog import annotation as ann
from cloud.catalog.models import (
    Annotation,
    AnnotationSource,
    DatasetSample,
    LineageEdge,
    Sample,
    Task,
    TaskKind,
    TaskStatus,
)
from cloud.core.config import Settings
from cloud.errors import InvalidInput, NotFound
from cloud.flywheel import _mine
from cloud.flywheel._mine import mine_dataset
from cloud.flywheel._synthetic import CLASSES, street_scenes
from cloud.flywheel.mining import BudgetExceedsPool, MiningInputError

N_MAIN, N_LABELED, N_FIELD = 40, 16, 6
POOL = N_MAIN - N_LABELED + N_FIELD  # unlabeled main samples + field hard cases


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def build_world(settings: Settings) -> dict[str, list[str]]:
    """Dataset ``street`` (40 images, 16 labeled) with a trained candidate
    ``street@1.0.0``, 6 field hard cases in ``field-street``/``field_hard``, an
    empty dataset ``empty`` and an unlabeled, model-less dataset ``cold``."""
    from cloud.flywheel._pipeline import train_dataset
    from cloud.flywheel._train import TrainConfig

    x, y = street_scenes(N_MAIN + N_FIELD + 8, seed=3)
    with Catalog.open(settings) as cat:
        cat.create_dataset("street", labels=CLASSES)
        cat.create_dataset("field-street", description="hard cases")
        cat.create_dataset("empty", labels=CLASSES)
        cat.create_dataset("cold", labels=CLASSES)
        main, field, cold = [], [], []
        for i in range(N_MAIN):
            sid = cat.add_image_bytes("street", _png(x[i]), source=f"s{i}.png").id
            main.append(sid)
            if i < N_LABELED:
                cat.annotate("street", sid, label=CLASSES[y[i]], annotator="oracle")
        for i in range(N_MAIN, N_MAIN + N_FIELD):
            field.append(
                cat.add_image_bytes(
                    "field-street",
                    _png(x[i]),
                    source="cb/v1/dev/cam-7/hard",
                    pool="field_hard",
                    device="cam-7",
                    selector="low_confidence",
                    reason="top score 0.41 < 0.5",
                    model_version="1.0.0",
                ).id
            )
        for i in range(N_MAIN + N_FIELD, N_MAIN + N_FIELD + 8):
            cold.append(cat.add_image_bytes("cold", _png(x[i]), source=f"c{i}.png").id)
        train_dataset(cat, "street", config=TrainConfig(head_epochs=60))
    return {"main": main, "field": field, "cold": cold}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path_factory.mktemp("mine-world") / "data"
    ids = build_world(Settings(data_dir=root))
    return root, ids


@pytest.fixture
def cat(world, tmp_path: Path) -> Iterator[Catalog]:
    root, _ = world
    shutil.copytree(root, tmp_path / "data")
    c = Catalog.open(Settings(data_dir=tmp_path / "data"))
    yield c
    c.close()


def _items(c: Catalog, task_id: str) -> list[ann.ItemView]:
    with c.transaction() as s:
        return ann.my_items(s, task_id, "annotator-1")


def test_round_opens_a_task_with_prelabels_reasons_and_lineage(cat: Catalog, world) -> None:
    _, ids = world
    progress: list[tuple[float, str]] = []
    out = mine_dataset(cat, "street", budget=8, progress=lambda f, m: progress.append((f, m)))
    assert out.model == "street@1.0.0" and out.selected == 8 and out.budget == 8
    assert out.pool_size == POOL and out.field_pool == N_FIELD and out.labeled == N_LABELED
    assert progress[-1][0] == 1.0 and any("embeddings" in m for _, m in progress)

    with cat.transaction() as s:
        summary = ann.summarize(s, out.annotation_task_id)
    assert summary.samples == 8 and summary.total == 8 and summary.status == TaskStatus.RUNNING
    items = _items(cat, out.annotation_task_id)
    assert len(items) == 8
    picked = {it.sample_id for it in items}
    assert picked == {it.sample_id for it in out.items}
    assert not picked & set(ids["main"][:N_LABELED])  # never a labeled sample
    for it in items:
        assert it.reason and len(it.reason) > 10
        assert it.prelabel is not None and it.prelabel.label in CLASSES
        assert it.prelabel.model_version == "street@1.0.0" and 0 <= it.prelabel.score <= 1

    # field hard cases are counted, and kept their provenance in the dataset's field_hard pool
    field = set(ids["field"])
    assert out.from_field == len(picked & field) == sum(i.from_field for i in out.items)
    for it in items:
        if it.sample_id in field:
            assert "field hard case from cam-7" in it.reason
    with cat.transaction() as s:
        pools = dict(
            s.execute(
                select(DatasetSample.sample_id, DatasetSample.pool).where(
                    DatasetSample.dataset_id == cat.get_dataset("street").id,
                    DatasetSample.sample_id.in_(field),
                )
            ).all()
        )
        assert pools == dict.fromkeys(field, "field_hard")
        assert {s.get(Sample, f).device for f in field} == {"cam-7"}
        pre = s.scalar(
            select(func.count(Annotation.id)).where(
                Annotation.source == AnnotationSource.MODEL,
                Annotation.task_id == out.annotation_task_id,
            )
        )
        assert pre == 8  # stored as model annotations: pre-labels, never current labels
        mining = s.get(Task, out.task_id)
        assert mining.kind == TaskKind.MINING and mining.status == TaskStatus.SUCCEEDED
        assert mining.result["annotation_task_id"] == out.annotation_task_id
        edges = {
            (e.direction, e.entity, e.role)
            for e in s.scalars(select(LineageEdge).where(LineageEdge.task_id == out.task_id))
        }
    assert ("output", "task", "annotation") in edges
    assert ("input", "model", "street@1.0.0") in edges
    assert ("input", "dataset", "pools=main,field_hard") in edges
    assert ("input", "dataset", "field_hard") in edges
    assert any(e[:2] == ("input", "dataset_version") for e in edges)
    assert not (cat.settings.data_dir / "mining" / out.task_id).exists()  # scratch cleaned


def test_field_hard_cases_alone_are_eligible(cat: Catalog, world) -> None:
    _, ids = world
    out = mine_dataset(cat, "street", budget=N_FIELD, pools=["field_hard"], strategy="entropy")
    assert out.from_field == N_FIELD == out.selected
    assert {i.sample_id for i in out.items} == set(ids["field"])
    with pytest.raises(BudgetExceedsPool, match="0 unlabeled samples not yet queued"):
        mine_dataset(cat, "street", budget=1, pools=["field_hard"])
    # without the field cases, only the main pool is mined
    out = mine_dataset(cat, "street", budget=5, include_field=False, strategy="margin")
    assert out.from_field == 0 and not {i.sample_id for i in out.items} & set(ids["field"])


def test_rerun_never_queues_a_sample_twice(cat: Catalog) -> None:
    first = mine_dataset(cat, "street", budget=12, strategy="kcenter")
    second = mine_dataset(cat, "street", budget=12, strategy="kcenter")
    a = {i.sample_id for i in first.items}
    b = {i.sample_id for i in second.items}
    assert len(a) == len(b) == 12 and not a & b  # filled with other samples
    assert second.already_queued == 12 and second.pool_size == POOL - 12
    left = POOL - 24
    with pytest.raises(BudgetExceedsPool, match=f"{left} unlabeled samples not yet queued"):
        mine_dataset(cat, "street", budget=left + 1)
    last = mine_dataset(cat, "street", budget=left, strategy="random")
    assert not {i.sample_id for i in last.items} & (a | b)
    with pytest.raises(BudgetExceedsPool, match="0 unlabeled samples"):
        mine_dataset(cat, "street", budget=1)
    # closing (cancelling) a task with open items frees its samples again
    with cat.transaction() as s:
        ann.close_task(s, first.annotation_task_id, force=True)
    again = mine_dataset(cat, "street", budget=12, strategy="random")
    assert {i.sample_id for i in again.items} == a


def _counts(cat: Catalog) -> tuple[int, int]:
    with cat.transaction() as s:
        return (
            s.scalar(select(func.count(Task.id)).where(Task.kind == TaskKind.MINING)),
            s.scalar(select(func.count(Task.id)).where(Task.kind == TaskKind.ANNOTATION)),
        )


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"budget": 0}, MiningInputError, "budget must be at least 1"),
        ({"budget": -3}, MiningInputError, "budget must be at least 1"),
        ({"budget": 2.5}, MiningInputError, "whole number"),
        ({"budget": POOL + 1}, BudgetExceedsPool, f"larger than the pool: {POOL} unlabeled"),
        ({"budget": 2, "model_version": "9.9.9"}, NotFound, "9.9.9.*does not exist.*street@1.0.0"),
        ({"budget": 2, "model_version": "nope@1.0.0"}, NotFound, "nope@1.0.0.*does not exist"),
        ({"budget": 2, "model_version": "street@2.0.0"}, NotFound, "versions of 'street': 1.0.0"),
        ({"budget": 2, "strategy": "magic"}, MiningInputError, "unknown strategy 'magic'"),
        ({"budget": 2, "pools": ["night"]}, MiningInputError, "no pool 'night'.*main"),
        ({"budget": 2, "pools": []}, MiningInputError, "at least one pool"),
    ],
)
def test_bad_input_is_refused_before_compute(cat: Catalog, kwargs, exc, match) -> None:
    before = _counts(cat)
    with pytest.raises(exc, match=match) as e:
        mine_dataset(cat, "street", **kwargs)
    assert isinstance(e.value, InvalidInput | NotFound)
    assert _counts(cat) == before  # no task started, nothing queued
    assert not (cat.settings.data_dir / "mining").exists()


def test_empty_or_unknown_dataset(cat: Catalog) -> None:
    with pytest.raises(MiningInputError, match="dataset 'empty' has no samples"):
        mine_dataset(cat, "empty", budget=1)
    with pytest.raises(NotFound, match="no dataset 'nowhere'"):
        mine_dataset(cat, "nowhere", budget=1)
    assert _counts(cat) == (0, 0)


def test_cold_start_without_a_model(cat: Catalog, world) -> None:
    _, ids = world
    out = mine_dataset(cat, "cold", budget=3)
    assert out.model is None and out.selected == 3 and out.from_field == 0
    items = _items(cat, out.annotation_task_id)
    assert {i.sample_id for i in items} <= set(ids["cold"])
    assert all(i.reason and i.prelabel is None for i in items)


def test_interrupted_run_resumes_and_never_opens_a_second_task(
    cat: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_mine, "SCORE_BATCH", 8)  # 46 rows: 6 scoring batches
    with cat.transaction() as s:
        t = Task(kind=TaskKind.MINING, status=TaskStatus.RUNNING, title="mine", params={})
        s.add(t)
        s.flush()
        tid = t.id

    class Stop(Exception):
        pass

    calls = {"n": 0}

    def check() -> None:
        calls["n"] += 1
        if calls["n"] == 5:  # embedding batch, end of embedding, 2 scored batches
            raise Stop

    with pytest.raises(Stop):
        mine_dataset(cat, "street", budget=6, task_id=tid, check=check)
    work = cat.settings.data_dir / "mining" / tid
    done = np.fromfile(work / "scored.u8", dtype=np.uint8)
    assert done.tolist() == [1, 1, 0, 0, 0, 0]
    assert _counts(cat)[1] == 0  # no annotation task yet

    msgs: list[str] = []
    out = mine_dataset(cat, "street", budget=6, task_id=tid, progress=lambda f, m: msgs.append(m))
    scored = [m for m in msgs if m.startswith("scored")]
    assert len(scored) == 4  # only the batches left
    assert out.selected == 6 and not out.resumed

    again = mine_dataset(cat, "street", budget=6, task_id=tid)
    assert again.resumed and again.annotation_task_id == out.annotation_task_id
    assert [i.sample_id for i in again.items] == [i.sample_id for i in out.items]
    assert _counts(cat)[1] == 1

    # the same selection as an uninterrupted run over the same pool and model
    with cat.transaction() as s:
        ann.close_task(s, out.annotation_task_id, force=True)
    fresh = mine_dataset(cat, "street", budget=6)
    assert [i.sample_id for i in fresh.items] == [i.sample_id for i in out.items]


@pytest.mark.integration
@pytest.mark.slow
def test_pool_scoring_fans_out_over_ray_by_size(cat: Catalog, world, tmp_path: Path) -> None:
    import ray

    local = mine_dataset(cat, "street", budget=6)
    root, _ = world
    shutil.copytree(root, tmp_path / "ray")
    msgs: list[str] = []
    try:
        with Catalog.open(Settings(data_dir=tmp_path / "ray", ray_min_samples=10)) as c2:
            out = mine_dataset(c2, "street", budget=6, progress=lambda f, m: msgs.append(m))
    finally:
        ray.shutdown()
    assert any("ray_min_samples=10" in m for m in msgs if m.startswith("scoring"))  # by size
    assert any(m.startswith("scored") and "on Ray" in m for m in msgs)
    assert [i.sample_id for i in out.items] == [i.sample_id for i in local.items]
    assert [i.prelabel for i in out.items] == [i.prelabel for i in local.items]
    np.testing.assert_allclose(
        [i.prelabel_score for i in out.items], [i.prelabel_score for i in local.items], rtol=1e-4
    )


def test_model_choice_published_first_then_candidate(cat: Catalog) -> None:
    from cloud.catalog.models import Model, ModelStatus

    with cat.transaction() as s:
        cand = s.scalar(select(Model).where(Model.algorithm == "street"))
        common = {
            "dataset_version_id": cand.dataset_version_id,
            "labels": list(cand.labels),
            "params": dict(cand.params),
            "artifacts": dict(cand.artifacts),
        }
        s.add(Model(algorithm="street", version="0.9.0", status=ModelStatus.PUBLISHED, **common))
    out = mine_dataset(cat, "street", budget=2)
    assert out.model == "street@0.9.0"  # the published one, though older
    assert all(i.prelabel for i in out.items)
    assert mine_dataset(cat, "street", budget=2, model_version="1.0.0").model == "street@1.0.0"
    assert (
        mine_dataset(cat, "street", budget=2, model_version="street@0.9.0").model == "street@0.9.0"
    )
    with cat.transaction() as s:
        s.add(Model(algorithm="street_alt", version="1.0.0", **common))
        s.add(Model(algorithm="street_boxes", version="3.0.0", task="detect", **common))
    with pytest.raises(MiningInputError, match="ambiguous.*algorithm@version"):
        mine_dataset(cat, "street", budget=2, model_version="1.0.0")
    with pytest.raises(MiningInputError, match="detect model"):
        mine_dataset(cat, "street", budget=2, model_version="street_boxes@3.0.0")


def test_detectors_are_not_used_to_score_a_pool(cat: Catalog) -> None:
    """Mining scores class probabilities: a box detector on the dataset is skipped by
    default (embeddings only, like a cold start) and refused when named."""
    from cloud.catalog.models import Model

    with cat.transaction() as s:
        for m in s.scalars(select(Model)):
            m.task = "detect"
    before = _counts(cat)
    with pytest.raises(MiningInputError, match="street@1.0.0 is a detect model"):
        mine_dataset(cat, "street", budget=2, model_version="1.0.0")
    assert _counts(cat) == before
    out = mine_dataset(cat, "street", budget=2)
    assert out.model is None and out.selected == 2

"""Annotation task logic on the catalog models: batches, hand-out, submit,
review, agreement (SQLite in a temp dir, no services)."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import func, select

from cloud.catalog import Catalog
from cloud.catalog import annotation as ann
from cloud.catalog.db import transaction
from cloud.catalog.models import (
    Annotation,
    AnnotationAssignment,
    AnnotationKind,
    AnnotationSource,
    Dataset,
    DatasetSample,
    ReviewState,
    Sample,
    TaskStatus,
)
from cloud.core.config import Settings
from cloud.errors import Conflict, Forbidden, InvalidInput, NotFound


def _sid(i: int) -> str:
    return hashlib.sha256(f"s{i}".encode()).hexdigest()


@pytest.fixture
def catalog(tmp_path):
    cat = Catalog.open(Settings(data_dir=tmp_path / "data"))
    yield cat
    cat.close()


@pytest.fixture
def sessions(catalog):
    factory = catalog.sessions
    with transaction(factory) as s:
        ds = Dataset(name="cars", labels=["car", "bus", "bike"])
        s.add(ds)
        s.flush()
        for i in range(30):
            s.add(Sample(id=_sid(i), width=64, height=48, source=f"img{i}.png"))
        s.flush()
        for i in range(30):
            s.add(DatasetSample(dataset_id=ds.id, sample_id=_sid(i)))
    return factory


def test_batches_are_handed_out_once_and_overlap_goes_to_named_annotators(catalog, sessions):
    with transaction(sessions) as s:
        spec = ann.AnnotationTaskSpec(
            dataset="cars",
            annotators=["ann", "bob", "cid"],
            batch_size=5,
            overlap=4,
            overlap_annotators=2,
        )
        task = ann.create_annotation_task(catalog, s, spec, created_by="op")
        tid = task.id
        assert task.status == TaskStatus.RUNNING
    names = ["ann", "bob", "cid"]
    with transaction(sessions) as s:
        first = {n: ann.my_items(s, tid, n) for n in names}
    # overlap items first (4 samples x 2 annotators, rotating), no batch claimed yet
    overlap = [i.sample_id for n in names for i in first[n]]
    assert all(i.overlap for n in names for i in first[n])
    assert len(overlap) == 8 and len(set(overlap)) == 4
    with transaction(sessions) as s:
        for n in names:
            for i in first[n]:
                ann.submit(catalog, s, tid, n, i.sample_id, label="car")
        later = {n: [i for i in ann.my_items(s, tid, n) if not i.overlap] for n in names}
    # then one claimed batch of 5 each, no sample handed to two annotators
    for n in names:
        assert len(later[n]) == 5 and len({i.batch for i in later[n]}) == 1
    singles = [i.sample_id for n in names for i in later[n]]
    assert len(singles) == len(set(singles)) == 15
    assert not set(singles) & set(overlap)
    with transaction(sessions) as s:
        summary = ann.summarize(s, tid)
        assert summary.samples == 30 and summary.overlap_samples == 4
        # 26 single samples in batches of 5 -> 6 batches, 3 claimed
        assert summary.unclaimed_batches == 3
        with pytest.raises(Forbidden):
            ann.my_items(s, tid, "mallory")


def test_submit_labels_progress_and_next_batch(catalog, sessions):
    with transaction(sessions) as s:
        tid = ann.create_annotation_task(
            catalog,
            s,
            ann.AnnotationTaskSpec(dataset="cars", batch_size=4, limit=6),
            created_by="op",
        ).id
    with transaction(sessions) as s:
        items = ann.my_items(s, tid, "ann")
        assert len(items) == 4
        for it in items:
            ann.submit(catalog, s, tid, "ann", it.sample_id, label="car")
        with pytest.raises(InvalidInput) as e:
            ann.submit(catalog, s, tid, "ann", items[0].sample_id, label="spaceship")
        assert e.value.field == "label"
    with transaction(sessions) as s:
        # all four done: next claims the remaining batch of 2
        nxt = ann.next_item(s, tid, "ann")
        assert nxt is not None and nxt.batch == 1
        # bob gets nothing: every batch is claimed
        assert ann.next_item(s, tid, "bob") is None
        with pytest.raises(Forbidden):
            ann.submit(catalog, s, tid, "bob", nxt.sample_id, label="car")
        with pytest.raises(NotFound):
            ann.submit(catalog, s, tid, "bob", _sid(29), label="car")
        task = ann.get_annotation_task(s, tid)
        assert task.progress == pytest.approx(4 / 6)


def test_relabel_supersedes_and_review_pass(catalog, sessions):
    with transaction(sessions) as s:
        tid = ann.create_annotation_task(
            catalog,
            s,
            ann.AnnotationTaskSpec(dataset="cars", batch_size=3, limit=3),
            created_by="op",
        ).id
    with transaction(sessions) as s:
        items = ann.my_items(s, tid, "ann")
        first = ann.submit(catalog, s, tid, "ann", items[0].sample_id, label="car")
        second = ann.submit(catalog, s, tid, "ann", items[0].sample_id, label="bus")
        assert second.supersedes_id == first.id
        b = ann.submit(catalog, s, tid, "ann", items[1].sample_id, label="bike")
        c = ann.submit(catalog, s, tid, "ann", items[2].sample_id, label="car")
        # nothing lost: both rows of the first item remain
        assert s.scalar(select(func.count(Annotation.id)).where(Annotation.task_id == tid)) == 4
    with transaction(sessions) as s:
        queue = ann.review_queue(s, tid)
        assert {q.annotation_id for q in queue} == {second.id, b.id, c.id}
        ann.review(catalog, s, tid, second.id, ann.ReviewAction.ACCEPT, reviewer="rev")
        fix = ann.review(
            catalog, s, tid, b.id, ann.ReviewAction.CORRECT, reviewer="rev", label="bus"
        )
        assert fix.supersedes_id == b.id and fix.review == ReviewState.ACCEPTED
        ann.review(catalog, s, tid, c.id, ann.ReviewAction.REJECT, reviewer="rev")
        with pytest.raises(Conflict):
            ann.review(catalog, s, tid, second.id, ann.ReviewAction.REJECT, reviewer="rev")
    with transaction(sessions) as s:
        # the rejected item is open again for its annotator
        nxt = ann.next_item(s, tid, "ann")
        assert nxt is not None and nxt.sample_id == items[2].sample_id
        assert s.get(Annotation, c.id).review == ReviewState.REJECTED
        with pytest.raises(Conflict):
            ann.close_task(s, tid)
        ann.submit(catalog, s, tid, "ann", nxt.sample_id, label="bike")
        assert ann.close_task(s, tid).status == TaskStatus.SUCCEEDED


def test_prelabels_accept_and_boxes(catalog, sessions):
    with transaction(sessions) as s:
        sid = _sid(0)
        spec = ann.AnnotationTaskSpec(
            dataset="cars",
            kind=AnnotationKind.BOXES,
            sample_ids=[sid, _sid(1)],
            reasons={sid: "uncertainty 0.93"},
            prelabels={
                sid: ann.PreLabel(
                    boxes=[ann.Box(x1=1, y1=2, x2=10, y2=20, label="car")],
                    score=0.7,
                    model_version="m1",
                )
            },
        )
        tid = ann.create_annotation_task(catalog, s, spec, created_by="op").id
    with transaction(sessions) as s:
        items = ann.my_items(s, tid, "ann")
        pre = next(i for i in items if i.sample_id == sid)
        assert pre.reason == "uncertainty 0.93"
        assert pre.prelabel is not None and pre.prelabel.boxes[0].label == "car"
        row = ann.submit(catalog, s, tid, "ann", sid, accept_prelabel=True)
        assert row.boxes[0]["x2"] == 10 and row.prelabel_id == pre.prelabel_id
        assert row.source == AnnotationSource.HUMAN
        with pytest.raises(InvalidInput) as e:
            ann.submit(catalog, s, tid, "ann", _sid(1), accept_prelabel=True)
        assert e.value.field == "accept_prelabel"
        with pytest.raises(InvalidInput) as e:
            ann.submit(
                catalog,
                s,
                tid,
                "ann",
                _sid(1),
                boxes=[{"x1": 0, "y1": 0, "x2": 5, "y2": 5, "label": "ufo"}],
            )
        assert e.value.field == "boxes[0].label"
        with pytest.raises(InvalidInput):
            ann.submit(catalog, s, tid, "ann", _sid(1), label="car")
        ann.submit(catalog, s, tid, "ann", _sid(1), boxes=[])


def test_bad_specs_name_the_field(catalog, sessions):
    with transaction(sessions) as s:
        with pytest.raises(NotFound):
            ann.create_annotation_task(
                catalog, s, ann.AnnotationTaskSpec(dataset="nope"), created_by="x"
            )
        with pytest.raises(InvalidInput) as e:
            ann.create_annotation_task(
                catalog,
                s,
                ann.AnnotationTaskSpec(dataset="cars", sample_ids=["f" * 64]),
                created_by="x",
            )
        assert e.value.field == "sample_ids"
        with pytest.raises(InvalidInput) as e:
            ann.create_annotation_task(
                catalog,
                s,
                ann.AnnotationTaskSpec(dataset="cars", overlap=3, annotators=["a"]),
                created_by="x",
            )
        assert e.value.field == "annotators"


def test_agreement_on_overlap(catalog, sessions):
    with transaction(sessions) as s:
        tid = ann.create_annotation_task(
            catalog,
            s,
            ann.AnnotationTaskSpec(
                dataset="cars", annotators=["a", "b"], overlap=4, limit=4, batch_size=10
            ),
            created_by="op",
        ).id
    a_labels = ["car", "bus", "car", "bike"]
    b_labels = ["car", "bus", "bike", "bike"]
    with transaction(sessions) as s:
        items = ann.my_items(s, tid, "a")
        assert all(i.overlap for i in items) and len(items) == 4
        order = [i.sample_id for i in items]
        for sid, la, lb in zip(order, a_labels, b_labels, strict=True):
            ann.submit(catalog, s, tid, "a", sid, label=la)
            ann.submit(catalog, s, tid, "b", sid, label=lb)
        assert (
            s.scalar(
                select(func.count(AnnotationAssignment.id)).where(
                    AnnotationAssignment.task_id == tid
                )
            )
            == 8
        )
    with transaction(sessions) as s:
        agr = ann.agreement(s, tid)
    assert agr.items == 4 and agr.raters == 2
    assert agr.raw_agreement == pytest.approx(0.75)
    expected = ann.cohen_kappa(a_labels, b_labels)
    assert agr.pairs[0].cohen_kappa == pytest.approx(expected)
    # Fleiss with two raters: computed from the same table
    assert agr.fleiss_kappa == pytest.approx(
        ann.fleiss_kappa([list(p) for p in zip(a_labels, b_labels, strict=True)])
    )


def test_kappa_reference_values():
    # Cohen's classic example (Wikipedia): 50 items, 20 yes/yes, 5 yes/no,
    # 10 no/yes, 15 no/no -> po = 0.7, pe = 0.5, kappa = 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert ann.cohen_kappa(a, b) == pytest.approx(0.4)
    assert ann.cohen_kappa(["x", "x"], ["x", "x"]) == 1.0
    assert ann.cohen_kappa([], []) is None
    # Fleiss' classic example (Wikipedia, 10 items, 14 raters, 5 categories) -> 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    ratings = [[str(c) for c, n in enumerate(row) for _ in range(n)] for row in table]
    assert ann.fleiss_kappa(ratings) == pytest.approx(0.2099, abs=1e-3)
    assert ann.boxes_agree(
        [{"x1": 0, "y1": 0, "x2": 10, "y2": 10, "label": "car"}],
        [{"x1": 1, "y1": 1, "x2": 10, "y2": 10, "label": "car"}],
    )
    assert not ann.boxes_agree(
        [{"x1": 0, "y1": 0, "x2": 10, "y2": 10, "label": "car"}],
        [{"x1": 1, "y1": 1, "x2": 10, "y2": 10, "label": "bus"}],
    )


def test_concurrent_annotators_never_get_the_same_sample(catalog):
    import threading

    with transaction(catalog.sessions) as s:
        ds = Dataset(name="many", labels=["a", "b"])
        s.add(ds)
        s.flush()
        for i in range(40):
            s.add(Sample(id=_sid(1000 + i)))
            s.flush()
            s.add(DatasetSample(dataset_id=ds.id, sample_id=_sid(1000 + i)))
    with transaction(catalog.sessions) as s:
        spec = ann.AnnotationTaskSpec(dataset="many", batch_size=4, limit=1000)
        tid = ann.create_annotation_task(catalog, s, spec, created_by="op").id
    got: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        mine: list[str] = []
        try:
            while True:
                with transaction(catalog.sessions) as s:
                    item = ann.next_item(s, tid, name)
                    if item is None:
                        break
                    ann.submit(catalog, s, tid, name, item.sample_id, label="a")
                    mine.append(item.sample_id)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        got[name] = mine

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    labeled = [sid for v in got.values() for sid in v]
    assert len(labeled) == len(set(labeled)) == 40
    with transaction(catalog.sessions) as s:
        assert ann.summarize(s, tid).done == 40

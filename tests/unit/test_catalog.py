"""Catalog service: datasets, content-addressed samples, append-only annotations,
versions with a frozen stratified test split, lineage, paging."""

from __future__ import annotations

from datetime import UTC

import cv2
import numpy as np
import pytest
from sqlalchemy import func, select, text

from cloud.catalog import Catalog, CorruptImage, SampleIn
from cloud.catalog.models import (
    Annotation,
    AnnotationSource,
    Sample,
    Split,
    Task,
    TaskKind,
)
from cloud.core.config import Settings
from cloud.errors import Conflict, InvalidInput, NotFound


def jpeg(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


@pytest.fixture
def catalog(data_dir) -> Catalog:  # type: ignore[no-untyped-def]
    c = Catalog.open(Settings(data_dir=data_dir))
    yield c
    c.close()


def _task(catalog: Catalog) -> str:
    with catalog.transaction() as s:
        t = Task(kind=TaskKind.IMPORT, title="t")
        s.add(t)
        s.flush()
        return t.id


def test_open_is_idempotent_and_wires_blob_store(data_dir) -> None:  # type: ignore[no-untyped-def]
    a = Catalog.open(Settings(data_dir=data_dir))
    b = Catalog.open(Settings(data_dir=data_dir))  # migrating twice is a no-op
    assert a.blobs.root == data_dir / "blobs"
    a.create_dataset("one")
    assert [d.name for d in b.list_datasets()] == ["one"]
    a.close()
    b.close()


def test_create_get_and_duplicate_dataset(catalog: Catalog) -> None:
    ds = catalog.create_dataset("cars", labels=["car", " bus ", "car"], description="d")
    assert ds.labels == ["car", "bus"]
    assert ds.created_at.tzinfo is not None
    assert catalog.get_dataset("cars").id == ds.id
    assert catalog.get_dataset(ds.id).name == "cars"
    assert catalog.get_dataset(str(ds.id)).name == "cars"
    with pytest.raises(Conflict, match="already exists"):
        catalog.create_dataset("cars")
    with pytest.raises(NotFound):
        catalog.get_dataset("nope")
    for bad in ("", "../x", "a b", "x" * 200):
        with pytest.raises(InvalidInput):
            catalog.create_dataset(bad)
    with pytest.raises(InvalidInput, match="label"):
        catalog.create_dataset("bad-labels", labels=["ok", "two\nlines"])
    assert [d.name for d in catalog.list_datasets()] == ["cars"]


def test_add_image_bytes_is_content_addressed_and_idempotent(catalog: Catalog) -> None:
    catalog.create_dataset("a")
    catalog.create_dataset("b")
    s1 = catalog.add_image_bytes("a", jpeg(1), source="cam1/x.jpg", camera="cam1")
    s2 = catalog.add_image_bytes("a", jpeg(1), source="elsewhere.jpg")
    assert s1.id == s2.id
    assert catalog.blobs.get(s1.id) == jpeg(1)
    assert s1.width == 32 and s1.media_type == "image/jpeg" and s1.camera == "cam1"
    catalog.add_image_bytes("b", jpeg(1))  # same sample, second dataset
    assert catalog.list_samples("a").total == 1
    assert catalog.list_samples("b").total == 1
    with catalog.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Sample)) == 1


def test_corrupt_image_bytes_write_nothing(catalog: Catalog) -> None:
    catalog.create_dataset("a")
    data = jpeg(2, 64)
    with pytest.raises(CorruptImage, match="truncated|readable"):
        catalog.add_image_bytes("a", data[: len(data) // 2], source="half.jpg")
    with pytest.raises(CorruptImage, match="upload.bin"):
        catalog.add_image_bytes("a", b"not an image", source="upload.bin")
    assert catalog.list_samples("a").total == 0
    assert list(catalog.blobs.iter_ids()) == []


def test_add_samples_requires_stored_blob_and_counts_existing(catalog: Catalog) -> None:
    catalog.create_dataset("a")
    with pytest.raises(InvalidInput, match="no blob"):
        catalog.add_samples("a", [SampleIn(id="c" * 64)])
    sha = catalog.blobs.put(jpeg(3))
    r1 = catalog.add_samples("a", [{"id": sha, "source": "s"}, {"id": sha, "source": "s"}])
    assert (r1.added, r1.existing) == (1, 1)  # the repeat counts as existing
    r2 = catalog.add_samples("a", [SampleIn(id=sha)])
    assert (r2.added, r2.existing) == (0, 1)


def test_annotations_are_appended_never_overwritten(catalog: Catalog) -> None:
    catalog.create_dataset("a", labels=["car", "bus"])
    sid = catalog.add_image_bytes("a", jpeg(4)).id
    first = catalog.annotate("a", sid, label="car", annotator="ann1")
    second = catalog.annotate("a", sid, label="bus", annotator="ann2")
    assert second.supersedes_id == first.id
    history = catalog.annotation_history("a", sid)
    assert [(h.id, h.label, h.annotator) for h in history] == [
        (first.id, "car", "ann1"),
        (second.id, "bus", "ann2"),
    ]
    assert catalog.current_annotations("a")[sid].id == second.id
    view = catalog.list_samples("a").items[0]
    assert (view.label, view.annotation_id, view.annotator) == ("bus", second.id, "ann2")
    with catalog.sessions() as s:  # the first row is untouched
        row = s.get(Annotation, first.id)
        assert row is not None and row.label == "car" and row.supersedes_id is None


def test_unknown_label_box_errors_and_membership(catalog: Catalog) -> None:
    catalog.create_dataset("a", labels=["car"])
    sid = catalog.add_image_bytes("a", jpeg(5, 32)).id
    with pytest.raises(InvalidInput, match="unknown label 'truck'"):
        catalog.annotate("a", sid, label="truck", annotator="x")
    catalog.add_labels("a", ["truck"])
    assert catalog.annotate("a", sid, label="truck", annotator="x").label == "truck"
    with pytest.raises(InvalidInput, match="label or boxes"):
        catalog.annotate("a", sid, annotator="x")
    with pytest.raises(InvalidInput, match="invalid box"):
        catalog.annotate(
            "a", sid, boxes=[{"x1": 5, "y1": 5, "x2": 1, "y2": 9, "label": "car"}], annotator="x"
        )
    with pytest.raises(InvalidInput, match="outside"):
        catalog.annotate(
            "a", sid, boxes=[{"x1": 0, "y1": 0, "x2": 90, "y2": 9, "label": "car"}], annotator="x"
        )
    with pytest.raises(InvalidInput, match="unknown box label"):
        catalog.annotate(
            "a", sid, boxes=[{"x1": 0, "y1": 0, "x2": 9, "y2": 9, "label": "cat"}], annotator="x"
        )
    boxes = catalog.annotate(
        "a", sid, boxes=[{"x1": 0, "y1": 0, "x2": 9, "y2": 9, "label": "car"}], annotator="x"
    )
    assert boxes.kind.value == "boxes" and boxes.boxes[0]["label"] == "car"
    catalog.create_dataset("b", labels=["car"])
    with pytest.raises(NotFound, match="not in dataset"):
        catalog.annotate("b", sid, label="car", annotator="x")
    # nothing was written by the failed calls
    assert len(catalog.annotation_history("a", sid)) == 2


def test_prelabels_are_kept_but_never_current(catalog: Catalog) -> None:
    catalog.create_dataset("a", labels=["car", "bus"])
    sid = catalog.add_image_bytes("a", jpeg(6)).id
    human = catalog.annotate("a", sid, label="car", annotator="h")
    pre = catalog.annotate(
        "a",
        sid,
        label="bus",
        annotator="model",
        source=AnnotationSource.MODEL,
        model_version="1.0.0",
        score=0.7,
    )
    assert catalog.current_annotations("a")[sid].id == human.id
    accepted = catalog.annotate("a", sid, label="bus", annotator="h", prelabel_id=pre.id)
    assert accepted.prelabel_id == pre.id and accepted.supersedes_id == human.id
    other = catalog.add_image_bytes("a", jpeg(7)).id
    with pytest.raises(InvalidInput, match="pre-label"):
        catalog.annotate("a", other, label="car", annotator="h", prelabel_id=pre.id)


def test_annotate_many_same_sample_twice_chains(catalog: Catalog) -> None:
    catalog.create_dataset("a", labels=["car", "bus"])
    sid = catalog.add_image_bytes("a", jpeg(8)).id
    a, b = catalog.annotate_many(
        "a", [{"sample_id": sid, "label": "car"}, {"sample_id": sid, "label": "bus"}], annotator="x"
    )
    assert b.supersedes_id == a.id
    assert catalog.current_annotations("a")[sid].label == "bus"


def test_list_samples_filters_and_paging(catalog: Catalog) -> None:
    catalog.create_dataset("a", labels=["car", "bus"])
    ids = []
    for i in range(23):
        s = catalog.add_image_bytes(
            "a",
            jpeg(100 + i),
            source=f"cam{i % 2}/{i}.jpg",
            camera=f"cam{i % 2}",
            pool="field_hard" if i >= 20 else "main",
        )
        ids.append(s.id)
    for i in range(0, 10):
        catalog.annotate("a", ids[i], label="car" if i < 6 else "bus", annotator="x")
    assert catalog.list_samples("a").total == 23
    assert [v.id for v in catalog.list_samples("a", limit=5).items] == ids[:5]  # insertion order
    assert catalog.list_samples("a", label="car").total == 6
    assert catalog.list_samples("a", labeled=True).total == 10
    assert catalog.list_samples("a", labeled=False).total == 13
    assert catalog.list_samples("a", pool="field_hard").total == 3
    assert catalog.list_samples("a", camera="cam1").total == 11
    assert catalog.list_samples("a", source="cam0/").total == 12
    assert catalog.list_samples("a", source="cam0/1").total == 5  # prefix: 10,12,..,18
    assert catalog.list_samples("a", label="bus", camera="cam0").total == 2
    # offset paging and keyset paging both cover everything exactly once, in order
    seen_offset = []
    for off in range(0, 23, 7):
        seen_offset += [v.id for v in catalog.list_samples("a", offset=off, limit=7).items]
    assert seen_offset == ids
    seen_keyset, cursor = [], None
    while True:
        page = catalog.list_samples("a", limit=7, after=cursor)
        seen_keyset += [v.id for v in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen_keyset == ids
    with pytest.raises(InvalidInput):
        catalog.list_samples("a", limit=0)
    with pytest.raises(InvalidInput, match="cursor"):
        catalog.list_samples("a", after="garbage")


def test_sample_listing_uses_an_index(catalog: Catalog) -> None:
    catalog.create_dataset("a")
    with catalog.engine.connect() as conn:
        plan = conn.execute(
            text(
                "EXPLAIN QUERY PLAN SELECT * FROM dataset_samples WHERE dataset_id = 1 "
                "ORDER BY added_at, sample_id LIMIT 50 OFFSET 100"
            )
        ).all()
        plan_label = conn.execute(
            text(
                "EXPLAIN QUERY PLAN SELECT * FROM dataset_samples WHERE dataset_id = 1 "
                "AND label = 'x' ORDER BY added_at, sample_id LIMIT 50"
            )
        ).all()
    assert "ix_dataset_samples_order" in str(plan) and "TEMP B-TREE" not in str(plan)
    assert "ix_dataset_samples_label" in str(plan_label) and "TEMP B-TREE" not in str(plan_label)


def test_membership_copies_the_stored_provenance_and_filters_without_a_join(
    catalog: Catalog,
) -> None:
    catalog.create_dataset("a")
    catalog.create_dataset("b")
    sources = ["x/%_1.jpg", "x/a1.jpg", "x/\U0010ffff.jpg", "x/\U0010ffffz.jpg", "y\u00e9/1.jpg"]
    ids = [
        catalog.add_image_bytes("a", jpeg(300 + i), source=src, camera=f"c{i % 2}", device="d")
        for i, src in enumerate(sources)
    ]
    # the same bytes again with other provenance: the membership gets the stored one
    again = catalog.add_image_bytes("b", jpeg(300), source="other/0.jpg", camera="zz")
    assert again.id == ids[0].id
    view = catalog.list_samples("b").items[0]
    assert (view.source, view.camera, view.device) == ("x/%_1.jpg", "c0", "d")
    assert catalog.list_samples("b", camera="c0").total == 1
    assert catalog.list_samples("b", camera="zz").total == 0
    assert catalog.list_samples("b", source="other").total == 0

    def by_source(prefix: str) -> list[str]:
        return [v.source for v in catalog.list_samples("a", source=prefix).items]

    for prefix in ["", "x", "x/", "x/%", "x/%_", "x/_", "x/\U0010ffff", "y\u00e9", "y", "z"]:
        assert by_source(prefix) == [s for s in sources if s.startswith(prefix)], prefix
    assert catalog.list_samples("a", camera="c1", device="d").total == 2
    assert catalog.list_samples("a", camera="c1", device="e").total == 0

    with catalog.engine.connect() as conn:
        for col, value in [("camera", "'c1'"), ("device", "'d'")]:
            plan = str(
                conn.execute(
                    text(
                        f"EXPLAIN QUERY PLAN SELECT sample_id FROM dataset_samples "
                        f"WHERE dataset_id = 1 AND {col} = {value} "
                        "ORDER BY added_at, sample_id LIMIT 50 OFFSET 100"
                    )
                ).all()
            )
            assert f"ix_dataset_samples_{col}" in plan and "TEMP B-TREE" not in plan
        plan = str(
            conn.execute(
                text(
                    "EXPLAIN QUERY PLAN SELECT count(*) FROM dataset_samples "
                    "WHERE dataset_id = 1 AND source >= 'x/' AND source < 'x0'"
                )
            ).all()
        )
        assert "ix_dataset_samples_source" in plan


def test_versions_are_immutable_snapshots(catalog: Catalog) -> None:
    catalog.create_dataset("a", labels=["car", "bus"])
    ids = [catalog.add_image_bytes("a", jpeg(200 + i)).id for i in range(6)]
    for i in range(4):
        catalog.annotate("a", ids[i], label="car", annotator="x")
    v1 = catalog.create_version("a", note="first", created_by="me")
    assert (v1.number, v1.sample_count, v1.labeled_count, v1.labels) == (1, 6, 4, ["car", "bus"])
    v1_items = {it.sample_id: it for it in catalog.iter_items("a", 1)}
    catalog.annotate("a", ids[0], label="bus", annotator="y")
    catalog.add_image_bytes("a", jpeg(300))
    v2 = catalog.create_version("a")
    assert v2.number == 2 and v2.sample_count == 7
    again = {it.sample_id: it for it in catalog.iter_items("a", 1)}
    assert again == v1_items and again[ids[0]].label == "car"
    assert {it.sample_id: it.label for it in catalog.iter_items("a", 2)}[ids[0]] == "bus"
    assert catalog.get_version("a").number == 2
    assert catalog.get_version("a", 1).note == "first"
    with pytest.raises(NotFound):
        catalog.get_version("a", 9)
    assert [v.number for v in catalog.list_versions("a")] == [1, 2]
    assert catalog.dataset_stats("a").latest_version == 2


def test_test_split_is_stratified_deterministic_and_frozen(data_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    def build(root) -> tuple[Catalog, list[str]]:  # type: ignore[no-untyped-def]
        c = Catalog.open(Settings(data_dir=root))
        c.create_dataset("a", labels=["car", "bus"])
        ids = [c.add_image_bytes("a", jpeg(400 + i)).id for i in range(30)]
        for i, sid in enumerate(ids[:25]):
            c.annotate("a", sid, label="car" if i < 20 else "bus", annotator="x")
        c.create_version("a")
        return c, ids

    c1, ids = build(data_dir)
    other = tmp_path / "other"
    other.mkdir()
    c2, _ = build(other)
    split1 = {v.id: v.split for v in c1.list_samples("a", limit=100).items}
    split2 = {v.id: v.split for v in c2.list_samples("a", limit=100).items}
    assert split1 == split2  # deterministic
    car_test = sum(1 for sid in ids[:20] if split1[sid] == Split.TEST)
    bus_test = sum(1 for sid in ids[20:25] if split1[sid] == Split.TEST)
    assert (car_test, bus_test) == (4, 1)  # 20% of each label
    assert all(split1[sid] is None for sid in ids[25:])  # unlabeled: no split yet
    # relabel a test sample and label new ones: the old splits never move
    test_sid = next(sid for sid in ids[:20] if split1[sid] == Split.TEST)
    c1.annotate("a", test_sid, label="bus", annotator="y")
    for sid in ids[25:]:
        c1.annotate("a", sid, label="bus", annotator="y")
    c1.create_version("a")
    after = {v.id: v.split for v in c1.list_samples("a", limit=100).items}
    assert all(after[sid] == split1[sid] for sid in ids[:25])
    assert all(after[sid] is not None for sid in ids)
    v2_splits = {it.sample_id: it.split for it in c1.iter_items("a", 2)}
    assert v2_splits == after
    c1.close()
    c2.close()


def test_lineage_edges(catalog: Catalog) -> None:
    tid = _task(catalog)
    catalog.create_dataset("a")
    v = catalog.create_version("a", task_id=tid)
    edge = catalog.record_lineage(tid, "input", "dataset", 1, role="train")
    assert edge.entity_id == "1"
    edges = catalog.lineage(task_id=tid)
    assert {(e.direction, e.entity) for e in edges} == {
        ("output", "dataset_version"),
        ("input", "dataset"),
    }
    assert catalog.lineage(entity="dataset_version", entity_id=v.id)[0].task_id == tid
    with pytest.raises(InvalidInput, match="direction"):
        catalog.record_lineage(tid, "sideways", "model", 1)
    with pytest.raises(NotFound):
        catalog.record_lineage("f" * 32, "input", "model", 1)


def test_datetimes_are_timezone_aware(catalog: Catalog) -> None:
    catalog.create_dataset("a", labels=["car"])
    sid = catalog.add_image_bytes("a", jpeg(9)).id
    ann = catalog.annotate("a", sid, label="car", annotator="x")
    with catalog.sessions() as s:
        row = s.get(Annotation, ann.id)
        assert row is not None and row.created_at.tzinfo == UTC
    view = catalog.list_samples("a").items[0]
    assert view.added_at.tzinfo == UTC


def test_source_prefix_is_literal(catalog: Catalog) -> None:
    catalog.create_dataset("a")
    catalog.add_image_bytes("a", jpeg(11), source="cam_1/a.jpg")
    catalog.add_image_bytes("a", jpeg(12), source="camX1/b.jpg")
    catalog.add_image_bytes("a", jpeg(13), source="100%/c.jpg")
    assert [v.source for v in catalog.list_samples("a", source="cam_").items] == ["cam_1/a.jpg"]
    assert [v.source for v in catalog.list_samples("a", source="100%").items] == ["100%/c.jpg"]
    assert catalog.list_samples("a", source="").total == 3

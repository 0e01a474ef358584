"""The flywheel on a catalog dataset: pretrain -> embed -> similar -> train ->
evaluate -> gate -> export, with task records and lineage."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from sqlalchemy import select

from cloud.catalog import Catalog
from cloud.catalog.models import LineageEdge, Model, ModelStatus, Task, TaskStatus
from cloud.errors import InvalidInput
from cloud.flywheel._pipeline import pretrain_dataset, train_dataset
from cloud.flywheel._synthetic import CLASSES, street_scenes


@pytest.fixture
def catalog(data_dir: Path) -> Catalog:
    cat = Catalog.open()
    yield cat
    cat.close()


def _fill(cat: Catalog, n: int, labeled: int) -> list[str]:
    x, y = street_scenes(n, seed=5)
    cat.create_dataset("street", labels=CLASSES)
    ids = []
    for img in x:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        assert ok
        ids.append(cat.add_image_bytes("street", buf.tobytes(), source="synthetic").id)
    for sid, c in list(zip(ids, y, strict=True))[:labeled]:
        cat.annotate("street", sid, label=CLASSES[c], annotator="oracle")
    return ids


def test_train_refuses_bad_label_sets_before_compute(catalog: Catalog) -> None:
    _fill(catalog, 6, 0)
    with pytest.raises(InvalidInput, match="0 labels"):
        train_dataset(catalog, "street")
    with pytest.raises(InvalidInput, match="no box annotations"):
        train_dataset(catalog, "street", task="detect")
    with catalog.transaction() as s:
        assert s.scalars(select(Task)).all() == []  # nothing started


def test_pretrain_train_and_gate(catalog: Catalog) -> None:
    ids = _fill(catalog, 48, 40)
    pre = pretrain_dataset(catalog, "street", epochs=1, seed=0)
    assert pre.samples == 48 and pre.epochs == 1

    from cloud.flywheel._pipeline import dataset_backbone, embedding_store

    store = embedding_store(catalog, dataset_backbone(catalog, "street"))
    assert len(store) == 48
    nn = store.neighbours(ids[0], 5)
    assert len(nn) == 5 and ids[0] not in [s for s, _ in nn]

    first = train_dataset(catalog, "street")
    assert first.version == "1.0.0" and first.gate.publish  # nothing published yet
    assert first.metrics.n >= 4 and first.parity_max_abs_diff <= 1e-3
    assert catalog.blobs.exists(first.onnx_sha256)
    with catalog.transaction() as s:
        row = s.get(Model, first.model_id)
        assert row.status == ModelStatus.CANDIDATE and row.dataset_version_id is not None
        row.status = ModelStatus.PUBLISHED  # as the store would after publishing
        task = s.get(Task, first.task_id)
        assert task.status == TaskStatus.SUCCEEDED
        roles = {
            (e.direction, e.entity)
            for e in s.scalars(select(LineageEdge).where(LineageEdge.task_id == first.task_id))
        }
    assert {("input", "dataset_version"), ("input", "embedding"), ("output", "model")} <= roles

    # same labels again: the candidate is evaluated against the published one and is not better
    second = train_dataset(catalog, "street")
    assert second.version == "1.1.0"
    assert second.gate.baseline is not None and not second.gate.publish


def test_publish_trained_model_to_store(catalog: Catalog, tmp_path: Path) -> None:
    import algorithm_store as st
    from cloud.errors import Conflict
    from cloud.flywheel._publish import publish_model

    _fill(catalog, 40, 40)
    key = st.load_private_key(st.keygen(tmp_path / "keys"))
    store = st.AlgorithmStore(tmp_path / "store", private_key=key)
    first = train_dataset(catalog, "street", algorithm="street_objects")
    out = publish_model(
        catalog,
        store,
        "street_objects",
        first.version,
        scenes=["street"],
        detects=["cone"],
        event_rules=[{"event": "cone_on_road", "labels": ["cone"]}],
    )
    assert store.channels("street_objects") == {"canary": "1.0.0"}
    info = store.version("street_objects", "1.0.0")
    assert info.manifest.lineage.training_task == first.task_id
    assert info.manifest.input.preprocess.resize == (64, 64)
    assert out["package_sha256"] == store.artifact_ref("street_objects", "1.0.0").sha256
    with pytest.raises(Conflict, match="already published"):
        publish_model(catalog, store, "street_objects", "1.0.0")
    second = train_dataset(catalog, "street", algorithm="street_objects")
    assert not second.gate.publish
    with pytest.raises(Conflict, match="gate refuses"):
        publish_model(catalog, store, "street_objects", second.version)
    assert [v.version for v in store.versions("street_objects")] == ["1.0.0"]

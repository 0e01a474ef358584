"""Embedding jobs without Ray: where a job runs and why, backbones as bytes
for workers, what a worker checks, and the in-process path (incremental, in
sample order, recorded). The Ray paths are in tests/integration/test_ray_cluster.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cloud.catalog import Catalog
from cloud.core.config import Settings
from cloud.errors import InvalidInput, Unavailable
from cloud.flywheel._backbones import load_backbone, scratch_backbone
from cloud.flywheel._ray import (
    EmbedWorker,
    backbone_payload,
    choose_executor,
    decode_rgb,
    embed_dataset,
    load_payload,
)
from cloud.flywheel._synthetic import street_scenes


@pytest.fixture
def catalog(data_dir: Path) -> Catalog:
    cat = Catalog.open()
    yield cat
    cat.close()


def add_scenes(cat: Catalog, n: int, seed: int = 3) -> list[str]:
    if "street" not in [d.name for d in cat.list_datasets()]:
        cat.create_dataset("street", labels=["a", "b"])
    ids = []
    for img in street_scenes(n, seed=seed)[0]:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        assert ok
        ids.append(cat.add_image_bytes("street", buf.tobytes(), source="synthetic").id)
    return ids


def test_small_jobs_stay_in_process_big_ones_go_to_ray(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, ray_min_samples=100)
    assert choose_executor(0, s)[0] == "local"
    where, why = choose_executor(99, s)
    assert where == "local" and "99 samples < ray_min_samples=100" in why
    assert choose_executor(100, s)[0] == "ray"
    assert choose_executor(5, s, "ray") == ("ray", "ray requested")
    assert choose_executor(10**6, s, "local")[0] == "local"
    with pytest.raises(InvalidInput, match="executor must be auto, local or ray"):
        choose_executor(5, s, "cluster")  # type: ignore[arg-type]


def test_backbones_travel_as_bytes_and_embed_the_same(tmp_path: Path) -> None:
    import torch

    images = street_scenes(6, seed=1)[0]
    scratch = scratch_backbone(seed=3)
    ts_path = tmp_path / "enc.pt"
    torch.jit.save(torch.jit.trace(scratch.module.eval(), torch.zeros(1, 3, 64, 64)), ts_path)
    onnx_path = tmp_path / "enc.onnx"
    torch.onnx.export(
        scratch.module.eval(),
        torch.zeros(1, 3, 64, 64),
        onnx_path,
        input_names=["input"],
        dynamic_axes={"input": {0: "N"}},
        dynamo=False,
    )
    want = scratch.embed(images)
    for bb in (scratch, load_backbone(ts_path), load_backbone(onnx_path)):
        payload = backbone_payload(bb)
        assert isinstance(payload["data"], bytes)
        copy = load_payload(payload)
        assert (copy.name, copy.input_size, copy.dim) == (bb.name, bb.input_size, bb.dim)
        np.testing.assert_allclose(copy.embed(images), want, rtol=1e-4, atol=1e-4)


def test_a_worker_checks_every_blob_it_gets(tmp_path: Path) -> None:
    worker = EmbedWorker.__new__(EmbedWorker)  # as Ray builds it, minus the node lookup
    worker.backbone, worker.node_id = scratch_backbone(), "node-x"
    img = street_scenes(1, seed=2)[0][0]
    data = cv2.imencode(".png", img)[1].tobytes()
    import hashlib

    sid = hashlib.sha256(data).hexdigest()
    f = tmp_path / sid
    f.write_bytes(data)
    node, by_bytes = worker.embed([data], [sid])
    assert node == "node-x" and by_bytes.shape == (1, 256)
    np.testing.assert_array_equal(worker.embed([str(f)], [sid])[1], by_bytes)
    with pytest.raises(InvalidInput, match="is corrupt"):
        worker.embed([data + b"x"], [sid])
    with pytest.raises(Unavailable, match="same path on every node"):
        worker.embed([str(tmp_path / "gone")], [sid])
    junk = b"not an image"
    with pytest.raises(InvalidInput, match="does not decode as an image"):
        worker.embed([junk], [hashlib.sha256(junk).hexdigest()])
    with pytest.raises(InvalidInput, match="does not decode"):
        decode_rgb(b"", 64)


def test_in_process_job_is_incremental_in_sample_order_and_recorded(catalog: Catalog) -> None:
    ids = add_scenes(catalog, 10)
    bb = scratch_backbone()
    seen: list[float] = []
    store, run = embed_dataset(catalog, bb, ids[:7], batch=3, progress=lambda f, m: seen.append(f))
    assert run.executor == "local" and "ray_min_samples" in run.reason
    assert (run.samples, run.already, run.backbone) == (7, 0, bb.name)
    assert store.ids == ids[:7] and seen[-1] == 1.0 and seen == sorted(seen)
    store, run = embed_dataset(catalog, bb, ids + ids[:2], batch=3)  # duplicates ignored
    assert (run.samples, run.already) == (3, 7)
    assert store.ids == ids
    want = bb.embed(np.stack([decode_rgb(catalog.blobs.get(s), 64) for s in ids]))
    np.testing.assert_allclose(store.get(ids), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidInput, match="batch must be >= 1"):
        embed_dataset(catalog, bb, ids, batch=0)


def test_pretraining_records_where_its_embeddings_ran(catalog: Catalog) -> None:
    from cloud.catalog.models import Task
    from cloud.flywheel._pipeline import pretrain_dataset

    add_scenes(catalog, 8)
    out = pretrain_dataset(catalog, "street", epochs=1)
    with catalog.transaction() as s:
        emb = s.get(Task, out.task_id).result["embedding"]
    assert emb["executor"] == "local" and emb["samples"] == 8 and emb["reason"]


def test_an_unreachable_ray_address_fails_fast(tmp_path: Path) -> None:
    from cloud.flywheel._ray import connect
    from tests.conftest import free_port

    with pytest.raises(Unavailable, match="no Ray answers at 127.0.0.1:"):
        connect(Settings(data_dir=tmp_path, ray_address=f"127.0.0.1:{free_port()}"))

"""cloud.serving on a real local Ray Serve (handles, no HTTP proxy): a
deployment per published version loaded and verified from the store, dynamic
batching across concurrent requests, channel deployment and per-request
errors. One Ray start for the whole file (it takes tens of seconds here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud.serving import (
    Predictor,
    ServingConfig,
    VersionNotFound,
    deploy_channel,
    deploy_version,
    predict,
    prelabel,
    undeploy,
)
from tests.conftest import free_port
from tests.unit.test_serving_predictor import frames, make_store

pytestmark = pytest.mark.integration
HTTP_PORT = free_port()


@pytest.fixture(scope="module")
def ray_serve() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    from ray import serve

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": HTTP_PORT})
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_store(tmp_path_factory.mktemp("serving-ray"), ("1.0.0", "2.0.0"))[0]


CFG = ServingConfig(
    max_batch_size=8, batch_wait_timeout_s=0.2, num_cpus=0.25, min_replicas=1, max_replicas=1
)


def test_a_version_serves_batched_predictions_equal_to_the_predictor(
    ray_serve: None, store: Any
) -> None:
    handle = deploy_version(store, "cls", "1.0.0", CFG)
    imgs = frames(16, seed=5)
    got = predict(handle, imgs)
    want = Predictor.from_store(store, "cls", "1.0.0").predict(imgs)
    assert [g.label for g in got] == [w.label for w in want]
    for g, w in zip(got, want, strict=True):
        assert g.probs == pytest.approx(w.probs, abs=1e-6)
    info = handle.info.remote().result()
    assert (info["algorithm"], info["version"], info["max_batch_size"]) == ("cls", "1.0.0", 8)
    sizes = {int(k): v for k, v in info["batch_sizes"].items()}
    assert sum(k * v for k, v in sizes.items()) == 16  # every image served once
    assert max(sizes) > 1, f"requests were never batched: {sizes}"
    assert max(sizes) <= 8

    # chunked requests (lists of images) share batches too, never above max_batch_size
    chunked = predict(handle, imgs, chunk=3)
    assert [g.label for g in chunked] == [w.label for w in want]
    sizes = {int(k): v for k, v in handle.info.remote().result()["batch_sizes"].items()}
    assert sum(k * v for k, v in sizes.items()) == 32 and max(sizes) <= 8
    with pytest.raises(Exception, match="at most max_batch_size=8"):
        handle.remote(imgs[:9]).result()
    # full requests (stacked, resized by the caller) run at once, same predictions
    full = predict(handle, imgs, chunk=8)
    assert [g.label for g in full] == [w.label for w in want]
    for g, w in zip(full, want, strict=True):
        assert g.probs == pytest.approx(w.probs, abs=1e-6)
    after = {int(k): v for k, v in handle.info.remote().result()["batch_sizes"].items()}
    assert after.get(8, 0) >= sizes.get(8, 0) + 2
    with pytest.raises(Exception, match="dtype must be uint8"):
        handle.remote(np.zeros((2, 8, 8, 3), np.float32)).result()

    # a bad image fails only its own request
    responses = [handle.remote(imgs[0]), handle.remote(np.zeros((4, 4, 3), np.float64))]
    assert responses[0].result().label == want[0].label
    with pytest.raises(Exception, match="dtype must be uint8"):
        responses[1].result()

    items = prelabel(handle, imgs[:3], sample_ids=[7, 8, 9])
    assert [i["sample_id"] for i in items] == [7, 8, 9]
    assert {i["model_version"] for i in items} == {"cls@1.0.0"}
    undeploy("cls", "1.0.0")


def test_a_channel_deploys_the_version_it_points_at(ray_serve: None, store: Any) -> None:
    import cv2
    import httpx

    handle = deploy_channel(store, "cls", "stable", CFG, route_prefix="/cls")
    assert handle.info.remote().result()["version"] == "2.0.0"
    img = frames(1, seed=11)
    want = Predictor.from_store(store, "cls", "2.0.0").predict(img)[0]
    assert predict(handle, img)[0].label == want.label
    # over HTTP through the Serve proxy (what a RayService exposes): PNG in, JSON out
    ok, png = cv2.imencode(".png", img[0])
    assert ok
    url = f"http://127.0.0.1:{HTTP_PORT}/cls"
    r = httpx.post(url, content=png.tobytes(), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["label"] == want.label
    assert r.json()["probs"] == pytest.approx(want.probs, abs=1e-6)
    bad = httpx.post(url, content=b"not an image", timeout=60)
    assert bad.status_code == 400 and "not a decodable image" in bad.json()["error"]["message"]
    with pytest.raises(VersionNotFound, match="beta"):
        deploy_channel(store, "cls", "beta", CFG)
    undeploy("cls", "2.0.0")


def test_serving_source_is_only_read(store: Any, tmp_path: Path) -> None:
    """Deployment reads the store; it never writes a version or channel."""
    assert [v.version for v in store.versions("cls")] == ["2.0.0", "1.0.0"]
    assert store.channels("cls") == {"stable": "2.0.0"}

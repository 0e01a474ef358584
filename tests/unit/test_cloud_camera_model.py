"""cloud.serving's cloud-device runtime without Ray: ServeModel over an
in-memory handle running the real BatchCore + Predictor (results as the edge
runtime gives them, real golden and cross checks, request failures), the
refusals of deploy_serve_model / cloud_model_loader and a Ray address nothing
answers at. Ray Serve itself: tests/integration/test_cloud_cameras.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud.serving import (
    BatchCore,
    InvalidRequest,
    Predictor,
    RayUnavailable,
    ServeModel,
    ServingConfig,
    ServingError,
    cloud_model_loader,
    deploy_serve_model,
    start_serving,
)
from edge_agent import GoldenCheckFailed, ModelLoadError, RuntimeModel
from edge_agent._runtime import load_model
from edge_agent.protocol import HardwareProfile, extract_package_archive, verify_package_dir
from tests.conftest import free_port
from tests.unit.test_serving_predictor import frames, make_store


class _Response:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def result(self, timeout_s: float | None = None) -> Any:
        return self._fn()


class _Handle:
    """In-memory stand-in for a DeploymentHandle: each request runs through the
    replica's BatchCore (validation, batch, Predictor) in this process."""

    def __init__(self, predictor: Predictor) -> None:
        self.core = BatchCore(predictor, ServingConfig())
        self.requests = 0

    def remote(self, request: Any) -> _Response:
        self.requests += 1
        images = self.core.check(request)
        return _Response(lambda: self.core.run_batch([images])[0][0])


@pytest.fixture(scope="module")
def pkg(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(store, unpacked verified 1.0.0 dir, its manifest, archive sha256)."""
    tmp = tmp_path_factory.mktemp("cloud-camera")
    store = make_store(tmp, ("1.0.0", "1.1.0"))[0]
    sha = store.version("cls", "1.0.0").sha256
    path, _ = store.published_artifact(sha)
    root = tmp / "pkg"
    extract_package_archive(path.read_bytes(), root)
    return store, root, verify_package_dir(root, store.public_key), sha


def model_for(pkg: Any, version: str = "1.0.0", **kw: Any) -> ServeModel:
    store, root, manifest, sha = pkg
    handle = kw.pop("handle", None) or _Handle(Predictor.from_store(store, "cls", version))
    return ServeModel(manifest, sha, root, handle=handle, public_key=store.public_key, **kw)


def test_results_are_what_the_edge_runtime_gives(pkg: Any) -> None:
    store, root, manifest, sha = pkg
    model = model_for(pkg)
    assert isinstance(model, RuntimeModel) and model.runtime == "ray-serve"
    edge = load_model(root, manifest, sha, HardwareProfile(target="cpu"), prefer_gpu=False)
    for frame in frames(4, seed=3) + [np.full((240, 320, 3), 90, np.uint8)]:
        got, want = model.run(frame), edge.run(frame)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
        assert [d.label for d in got.detections] == [d.label for d in want.detections]
        assert [d.score for d in got.detections] == pytest.approx(
            [d.score for d in want.detections], abs=1e-5
        )
        assert got.embedding is None and got.inference_ms > 0
    assert model.key == ("cls", "1.0.0", sha)


def test_warm_and_golden_check_go_through_the_deployment(pkg: Any) -> None:
    handle = _Handle(Predictor.from_store(pkg[0], "cls", "1.0.0"))
    model = model_for(pkg, handle=handle)
    model.warm(2)
    assert handle.requests == 2
    assert model.golden_check() <= pkg[2].golden.atol
    assert handle.requests == 3  # the probe frame
    with pytest.raises(ModelLoadError, match="only in the golden check"):
        model.infer(np.zeros((1, 3, 8, 8), np.float32))  # the local copy is gone


def test_a_deployment_serving_another_model_fails_the_golden_check(pkg: Any) -> None:
    model = model_for(pkg, handle=_Handle(Predictor.from_store(pkg[0], "cls", "1.1.0")))
    with pytest.raises(GoldenCheckFailed, match="differs from the verified package"):
        model.golden_check()


def test_a_tampered_package_fails_the_golden_check(pkg: Any, tmp_path: Path) -> None:
    import shutil

    store, root, manifest, sha = pkg
    copy = tmp_path / "pkg"
    shutil.copytree(root, copy)
    g = copy / manifest.golden.output
    g.write_bytes(g.read_bytes()[:-4] + b"\0\0\0\0")
    model = ServeModel(
        manifest,
        sha,
        copy,
        handle=_Handle(Predictor.from_store(store, "cls", "1.0.0")),
        public_key=store.public_key,
    )
    with pytest.raises(GoldenCheckFailed, match="package refused"):
        model.golden_check()


def test_a_failed_request_is_one_clear_line(pkg: Any) -> None:
    class Broken:
        def remote(self, request: Any) -> _Response:
            def fail() -> Any:
                raise RuntimeError("ray::ServeReplica.handle_request()\n  File x\nreplica died")

            return _Response(fail)

    model = model_for(pkg, handle=Broken())
    with pytest.raises(ServingError, match=r"cls 1.0.0 \(ray-serve\): .* failed: replica died$"):
        model.run(np.zeros((10, 10, 3), np.uint8))


def test_only_classifiers_are_deployed(pkg: Any) -> None:
    store, root, manifest, sha = pkg
    post = manifest.postprocess.model_copy(update={"output": "boxes"})
    det = manifest.model_copy(update={"task": "detect", "postprocess": post})
    with pytest.raises(ModelLoadError, match="classifiers only; assign it to an edge device"):
        deploy_serve_model(root, det, sha, public_key=store.public_key, store_dir=store.root)


def test_loader_arguments_are_checked() -> None:
    with pytest.raises(InvalidRequest, match="exactly one of store_dir or artifact_url"):
        cloud_model_loader(public_key=b"k" * 32)
    with pytest.raises(InvalidRequest, match="exactly one"):
        cloud_model_loader(public_key=b"k" * 32, store_dir="/s", artifact_url="http://a")
    with pytest.raises(InvalidRequest, match="BGR"):
        cloud_model_loader(
            public_key=b"k" * 32, store_dir="/s", config=ServingConfig(color_order="RGB")
        )


def test_a_ray_address_nothing_answers_at_fails_fast() -> None:
    pytest.importorskip("ray")
    with pytest.raises(RayUnavailable, match="no Ray at 127.0.0.1"):
        start_serving(f"127.0.0.1:{free_port()}")
    with pytest.raises(RayUnavailable, match="expected host:port"):
        start_serving("somewhere")

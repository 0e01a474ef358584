"""Camera scene inference (issue 7 item 2): a scene classifier published in the store
runs on keyframes of real sources (a video file, an image folder) and its scores
become inferred scenes of the knowledge graph; operator, confirmed and rejected
scenes are never changed; bad sources and non-scene classifiers are refused. The CLI
runs as the real executable against the stored graph and store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import algorithm_store as st
import knowledge_graph as kg
from algorithm_store.testing import tiny_package_kwargs
from cloud.errors import InvalidInput, NotFound
from cloud.scenes import infer_camera_scenes, load_classifier, read_keyframes
from tests.conftest import REPO

pytestmark = pytest.mark.integration
CITYBRAIN = str(Path(sys.executable).with_name("citybrain"))
SIZE = 8
GRAY, GREEN = (128, 128, 128), (40, 200, 40)  # BGR


def scene_onnx(path: Path, n_classes: int = 2) -> Path:
    """input [N,3,8,8] RGB in [0,1] -> channel means -> logits; column 0 ("street")
    grows with red+blue-green, column 1 ("park") with green-red-blue."""
    import onnx
    from onnx import TensorProto, helper

    w = np.array([[10, -10], [-10, 10], [10, -10]], np.float32)[:, :n_classes]
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
        ],
        "scenes",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_classes])],
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]),
            helper.make_tensor("W", TensorProto.FLOAT, list(w.shape), w.flatten().tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def publish(store: Any, key: Any, tmp: Path, algorithm: str, labels: list[str]) -> None:
    built = st.build_package(
        scene_onnx(tmp / f"{algorithm}.onnx"),
        id=algorithm,
        version="1.0.0",
        private_key=key,
        out_dir=tmp / "out",
        input={
            "name": "input",
            "dtype": "float32",
            "shape": ["N", 3, SIZE, SIZE],
            "preprocess": {
                "resize": [SIZE, SIZE],
                "color": "RGB",
                "scale": 1 / 255,
                "mean": [0, 0, 0],
                "std": [1, 1, 1],
                "layout": "NCHW",
            },
        },
        profile=False,
        **tiny_package_kwargs(labels=labels, detects=[], event_rules=[], scenes=[]),
    )
    store.publish(built.archive, channel="stable")


def video(path: Path, bgr: tuple[int, int, int], n: int = 20) -> Path:
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    assert out.isOpened()
    for i in range(n):
        frame = np.full((48, 64, 3), bgr, np.uint8)
        frame[i % 48, :, :] = 0  # frames differ
        out.write(frame)
    out.release()
    return path


def folder(path: Path, bgr: tuple[int, int, int], n: int = 5) -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(path / f"{i:03d}.jpg"), np.full((40, 60, 3), bgr, np.uint8))
    (path / "notes.txt").write_text("not an image")
    return path


@pytest.fixture
def city(tmp_path: Path) -> dict[str, Any]:
    key = st.load_private_key(st.keygen(tmp_path / "keys"))
    store = st.AlgorithmStore(tmp_path / "store", private_key=key)
    publish(store, key, tmp_path, "scenes", ["street", "park"])
    publish(store, key, tmp_path, "not-scenes", ["street", "helmet"])
    g = kg.CityGraph()
    g.seed()
    g.add_camera("cam-road", zone="city/a", source=str(folder(tmp_path / "road", GRAY)))
    g.add_camera("cam-park", zone="city/a", source=str(video(tmp_path / "park.avi", GREEN)))
    g.add_camera("cam-op", zone="city/a", scenes=["park"], source=str(tmp_path / "road"))
    g.add_camera("cam-dead", zone="city/b", source=str(tmp_path / "missing.avi"))
    return {"store": store, "graph": g, "tmp": tmp_path}


def test_keyframes_spread_over_video_and_folder(city: dict[str, Any]) -> None:
    tmp = city["tmp"]
    frames = read_keyframes(str(tmp / "park.avi"), 4)
    assert len(frames) == 4 and all(f.shape == (48, 64, 3) for f in frames)
    assert len({int(np.argmin(f[:, 0, 0])) for f in frames}) == 4  # 4 different frames
    assert len(read_keyframes(str(tmp / "road"), 8)) == 5  # every image, the .txt skipped


def test_inferred_scenes_are_recorded_with_confidence(city: dict[str, Any]) -> None:
    g, pred = city["graph"], load_classifier(city["store"], "scenes", None, "stable")
    road = infer_camera_scenes(g, "cam-road", pred, frames=4)
    park = infer_camera_scenes(g, "cam-park", pred, frames=4)
    assert road["scores"]["street"] > 0.9 and park["scores"]["park"] > 0.9
    assert road["classifier"] == "scenes@1.0.0" and park["frames"] == 4
    assert "street" in g.camera_scenes("cam-road") and "park" not in g.camera_scenes("cam-road")
    assert "park" in g.camera_scenes("cam-park")
    links = {s.scene: s for s in g.scene_links("cam-road")}
    assert links["street"].source == "inferred" and links["street"].confidence > 0.9
    # the operator's scene stays as set: inference only adds inferred edges beside it
    op = infer_camera_scenes(g, "cam-op", pred)
    assert "park" in g.camera_scenes("cam-op")
    assert {s.scene: s.source for s in g.scene_links("cam-op")}["park"] == "operator"
    assert op["recorded"] == ["street"]
    # a rejected scene is not brought back by a later inference
    g.reject_scene("cam-road", "street")
    infer_camera_scenes(g, "cam-road", pred)
    assert "street" not in g.camera_scenes("cam-road")


def test_bad_inputs_are_refused_before_recording(city: dict[str, Any]) -> None:
    g, store = city["graph"], city["store"]
    pred = load_classifier(store, "scenes", "1.0.0", "ignored")
    with pytest.raises(InvalidInput, match="cannot be opened"):
        infer_camera_scenes(g, "cam-dead", pred)
    with pytest.raises(NotFound, match="unknown camera"):
        infer_camera_scenes(g, "cam-nowhere", pred)
    with pytest.raises(InvalidInput, match=r"labels \['helmet'\] name no scene"):
        infer_camera_scenes(g, "cam-road", load_classifier(store, "not-scenes", None, "stable"))
    with pytest.raises(NotFound, match="no version on channel 'canary'"):
        load_classifier(store, "scenes", None, "canary")
    with pytest.raises(InvalidInput, match="frames must be"):
        read_keyframes(str(city["tmp"] / "park.avi"), 0)
    with pytest.raises(InvalidInput, match="no readable frame"):
        read_keyframes(str(folder(city["tmp"] / "empty", GRAY, 0)), 3)
    assert g.scene_links("cam-road") == [] and g.scene_links("cam-dead") == []


def _cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CITYBRAIN_DATA_DIR": str(data)}
    env.pop("CITYBRAIN_DB_URL", None)
    return subprocess.run(
        [CITYBRAIN, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_infers_every_camera_and_reports_the_unreadable_one(tmp_path: Path) -> None:
    data = tmp_path / "cb"
    assert _cli(data, "store", "keygen").returncode == 0
    key = st.load_private_key(data / "store" / "key")
    publish(st.AlgorithmStore(data / "store", private_key=key), key, tmp_path, "scenes",
            ["street", "park"])  # fmt: skip
    for args in (
        ("graph", "seed"),
        ("graph", "add-camera", "cam-road", "--zone", "c/a", "--source", str(folder(tmp_path / "r", GRAY))),
        ("graph", "add-camera", "cam-park", "--zone", "c/a", "--source", str(video(tmp_path / "p.avi", GREEN))),
        ("graph", "add-camera", "cam-dead", "--zone", "c/b", "--source", str(tmp_path / "gone.avi")),
    ):  # fmt: skip
        r = _cli(data, *args)
        assert r.returncode == 0, r.stderr
    r = _cli(data, "graph", "infer-scenes", "--all", "--classifier", "scenes", "--frames", "3")
    assert r.returncode == 0, r.stderr
    assert "camera cam-road: street=" in r.stdout and "counting scenes: street" in r.stdout
    assert "camera cam-park: park=" in r.stdout
    assert (
        "camera cam-dead: skipped: camera source" in r.stderr and "1 camera(s) skipped" in r.stderr
    )
    r = _cli(data, "graph", "infer-scenes", "cam-dead", "--classifier", "scenes")
    assert r.returncode == 2 and "cannot be opened" in r.stderr
    r = _cli(data, "graph", "infer-scenes", "--classifier", "scenes")
    assert r.returncode == 2 and "name cameras or pass --all" in r.stderr
    r = _cli(data, "graph", "infer-scenes", "cam-road", "--classifier", "nope")
    assert r.returncode == 2
    g = kg.load(_engine(data))
    assert "street" in g.camera_scenes("cam-road") and "park" in g.camera_scenes("cam-park")


def _engine(data: Path) -> Any:
    from cloud.catalog.db import make_engine

    return make_engine(f"sqlite:///{data / 'catalog.db'}")


@pytest.mark.slow
def test_scene_inference_through_ray_serve_matches_in_process(city: dict[str, Any]) -> None:
    """Issue 8 item 3: camera scene inference on the Ray Serve deployment of the
    classifier gives the in-process scores."""
    import ray
    from ray import serve

    from cloud.serving import start_serving

    g, store = city["graph"], city["store"]
    local = load_classifier(store, "scenes", None, "stable")
    want = {
        c: infer_camera_scenes(g, c, local, frames=3)["scores"] for c in ("cam-road", "cam-park")
    }
    start_serving(num_cpus=1)
    try:
        served = load_classifier(store, "scenes", None, "stable", serve=True)
        assert (served.algorithm, served.version, served.labels) == (
            "scenes",
            "1.0.0",
            local.labels,
        )
        for cam, scores in want.items():
            got = infer_camera_scenes(g, cam, served, frames=3)["scores"]
            assert got.keys() == scores.keys()
            assert all(abs(got[k] - scores[k]) < 1e-4 for k in scores), (cam, got, scores)
        assert "scenes" in str(serve.status().applications)
    finally:
        serve.shutdown()
        ray.shutdown()

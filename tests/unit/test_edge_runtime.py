"""Pre/post-processing per manifest, NMS, golden check, ORT loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent import GoldenCheckFailed
from edge_agent._runtime import (
    OrtModel,
    load_model,
    matching_engine,
    nms,
    postprocess,
    preprocess,
    softmax,
    tensorrt_available,
)
from edge_agent.protocol import (
    EngineEntry,
    HardwareProfile,
    InputSpec,
    Postprocess,
    Preprocess,
    extract_package_archive,
    verify_package_dir,
)
from tests.edge_support import Keys, build_package


def test_preprocess_layout_color_scale_mean_std() -> None:
    frame = np.zeros((4, 6, 3), np.uint8)
    frame[..., 0] = 255  # blue in BGR
    spec = InputSpec(
        shape=[1, 3, 2, 3],
        preprocess=Preprocess(resize=(2, 3), color="RGB", mean=[0.5, 0, 0], std=[0.5, 1, 1]),
    )
    x = preprocess(frame, spec)
    assert x.shape == (1, 3, 2, 3) and x.dtype == np.float32
    assert np.allclose(x[0, 0], -1.0) and np.allclose(x[0, 2], 1.0)  # R=(0-.5)/.5, B=1
    nhwc = InputSpec(
        shape=[1, 2, 3, 1],
        dtype="uint8",
        preprocess=Preprocess(resize=(2, 3), color="GRAY", layout="NHWC"),
    )
    y = preprocess(frame, nhwc)
    assert y.shape == (1, 2, 3, 1) and y.dtype == np.uint8


def test_softmax_and_nms() -> None:
    p = softmax(np.array([1000.0, 1000.0, -1000.0]))
    assert np.allclose(p, [0.5, 0.5, 0.0])
    boxes = np.array([[0, 0, 1, 1], [0, 0, 0.9, 1], [2, 2, 3, 3]], np.float32)
    assert nms(boxes, np.array([0.8, 0.9, 0.5]), 0.5) == [1, 2]


def _manifest(tmp_path: Path, **kw: object):  # type: ignore[no-untyped-def]
    keys = Keys(tmp_path)
    archive, ref, manifest = build_package(tmp_path, keys, **kw)
    pkg = tmp_path / "pkg"
    extract_package_archive(archive, pkg)
    return pkg, verify_package_dir(pkg, keys.raw), ref


def test_postprocess_boxes_threshold_and_per_class_nms(tmp_path: Path) -> None:
    _, m, _ = _manifest(tmp_path, task="detect", labels=["car", "person"])
    rows = np.array(
        [
            [
                [0.1, 0.1, 0.5, 0.5, 0.9, 0],
                [0.1, 0.1, 0.5, 0.5, 0.8, 1],
                [0.11, 0.1, 0.5, 0.5, 0.7, 0],
                [0, 0, 1, 1, 0.2, 0],
            ]
        ],
        np.float32,
    )
    r = postprocess([rows], m, ["boxes"])
    assert [(d.label, round(d.score, 2)) for d in r.detections] == [("car", 0.9), ("person", 0.8)]
    assert r.scores.shape == (4,)


def test_postprocess_logits_topk_threshold(tmp_path: Path) -> None:
    _, m, _ = _manifest(tmp_path, score_threshold=0.3)
    r = postprocess(
        [np.array([[2.0, 1.0, -5.0]], np.float32), np.ones((1, 3), np.float32)],
        m,
        ["logits", "embedding"],
    )
    assert [d.label for d in r.detections] == ["car"]
    assert np.isclose(r.scores.sum(), 1.0) and r.embedding is not None and r.embedding.shape == (3,)
    m.postprocess = Postprocess(output="probabilities", score_threshold=0.2)
    r = postprocess([np.array([[0.6, 0.3, 0.1]], np.float32)], m, ["p"])
    assert [d.label for d in r.detections] == ["car", "person"]


def test_loaded_model_runs_and_passes_golden(tmp_path: Path) -> None:
    pkg, m, ref = _manifest(tmp_path)
    hw = HardwareProfile(target="cpu-x86_64")
    model = load_model(pkg, m, ref.sha256, hw)
    assert isinstance(model, OrtModel) and model.runtime == "onnxruntime-cpu"
    model.warm(2)
    assert model.golden_check() < 1e-4
    res = model.run(np.full((48, 64, 3), 100, np.uint8))
    assert res.scores.shape == (3,) and res.inference_ms >= 0


def test_golden_check_failure_is_explained(tmp_path: Path) -> None:
    pkg, m, ref = _manifest(tmp_path, golden_shift=0.01)
    model = load_model(pkg, m, ref.sha256, HardwareProfile(target="cpu"))
    with pytest.raises(GoldenCheckFailed, match="max abs diff 0.01"):
        model.golden_check()


def test_engine_matching_and_tensorrt_skip_message(tmp_path: Path) -> None:
    _, m, _ = _manifest(tmp_path)
    m.files["e.plan"] = m.files["model.onnx"]
    m.engines = [
        EngineEntry(
            target="gpu-sm87", gpu_arch="sm87", tensorrt="10.3.1", precision="fp16", file="e.plan"
        )
    ]
    assert (
        matching_engine(m, HardwareProfile(target="gpu-sm87", gpu_arch="sm87", tensorrt="10.3.0"))
        == "e.plan"
    )
    assert (
        matching_engine(m, HardwareProfile(target="gpu-sm90", gpu_arch="sm90", tensorrt="10.3.1"))
        is None
    )
    assert matching_engine(m, HardwareProfile(target="cpu")) is None
    why = tensorrt_available()
    try:
        import tensorrt  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        assert why is not None and "TensorRT is not installed" in why

"""Engine targets and keys; packages carry prebuilt engines with hashes; the
TensorRT builder refuses clearly where TensorRT or a GPU is absent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import algorithm_store as st
from algorithm_store import engines
from algorithm_store.testing import tiny_classifier_onnx, tiny_package_kwargs
from edge_agent.protocol import extract_package_archive, sha256_file


def test_targets_and_keys() -> None:
    assert "cpu-x86" in engines.TARGETS and "gpu-sm87" in engines.TARGETS
    assert engines.target_for_arch("sm90") == "gpu-sm90"
    with pytest.raises(st.StoreError, match="sm87"):
        engines.target_for_arch("hopper")
    k = engines.EngineKey("sm87", "10.3.0", "fp16")
    assert k.target == "gpu-sm87" and k.filename == "gpu-sm87-trt10.3.0-fp16.engine"


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_builder_raises_engine_unavailable_without_tensorrt(tmp_path: Path) -> None:
    model = tiny_classifier_onnx(tmp_path / "model.onnx")
    with pytest.raises(st.EngineUnavailable, match="TensorRT is not installed"):
        engines.build_tensorrt_engine(model, "fp16")
    ok, why = engines.tensorrt_available()
    assert not ok and "TensorRT" in why


def test_builder_validates_arguments_first(tmp_path: Path) -> None:
    with pytest.raises(st.StoreError, match="precision"):
        engines.build_tensorrt_engine(tmp_path / "m.onnx", "int4")  # type: ignore[arg-type]
    with pytest.raises(st.StoreError, match="no such ONNX"):
        engines.build_tensorrt_engine(tmp_path / "missing.onnx", "fp16")


def test_package_records_engines_per_target(tmp_path: Path) -> None:
    key = st.load_private_key(st.keygen(tmp_path / "k"))
    model = tiny_classifier_onnx(tmp_path / "m" / "model.onnx")
    blob = tmp_path / "model.gpu-sm87.engine"
    blob.write_bytes(b"serialized engine bytes (built on an Orin)")
    eng = engines.EngineBuild(blob, "sm87", "10.3.0", "fp16", build_s=1.0)
    b = st.build_package(
        model,
        id="cars",
        version="1.0.0",
        private_key=key,
        out_dir=tmp_path / "o",
        engines=[eng],
        **tiny_package_kwargs(),
    )
    (entry,) = b.manifest.engines
    assert (entry.target, entry.gpu_arch, entry.tensorrt, entry.precision) == (
        "gpu-sm87",
        "sm87",
        "10.3.0",
        "fp16",
    )
    assert entry.file == "engines/gpu-sm87-trt10.3.0-fp16.engine"
    d = tmp_path / "x"
    extract_package_archive(b.archive, d)
    assert b.manifest.files[entry.file].sha256 == sha256_file(d / entry.file)
    assert st.verify_archive(b.archive, st.public_key_raw(key)).engines == b.manifest.engines

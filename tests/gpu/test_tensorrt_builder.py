"""TensorRT engine builder on a real GPU (run on a lent GPU machine).

Skipped, with the reason, where TensorRT or an NVIDIA GPU is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import algorithm_store as st
from algorithm_store import engines
from algorithm_store.testing import tiny_classifier_onnx, tiny_package_kwargs

pytestmark = pytest.mark.gpu

_ok, _why = engines.tensorrt_available()
if not _ok:
    pytest.skip(
        f"TensorRT engine builder needs TensorRT and a GPU: {_why}", allow_module_level=True
    )


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_deserialize_and_package(tmp_path: Path, precision: str) -> None:
    import tensorrt as trt

    model = tiny_classifier_onnx(tmp_path / "model.onnx", size=32)
    build = engines.build_tensorrt_engine(model, precision, out_dir=tmp_path / "eng")
    arch = engines.detect_gpu_arch()
    assert build.gpu_arch == arch and build.tensorrt == trt.__version__
    assert build.target == f"gpu-{arch}" and build.path.stat().st_size > 0
    assert build.path.name == f"model.gpu-{arch}-trt{trt.__version__}-{precision}.engine"
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(build.path.read_bytes())
    assert engine is not None
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    assert names == {"input", "logits"}
    again = engines.build_tensorrt_engine(model, precision, out_dir=tmp_path / "eng")
    assert again.cached and again.path == build.path

    key = st.load_private_key(st.keygen(tmp_path / "k"))
    pkg = st.build_package(
        model,
        id="gpu",
        version="1.0.0",
        private_key=key,
        out_dir=tmp_path / "o",
        engines=[build],
        **tiny_package_kwargs(),
    )
    assert pkg.manifest.engines[0].target == f"gpu-{arch}"
    assert st.verify_archive(pkg.archive, st.public_key_raw(key)).engines[0].precision == precision


def test_int8_with_calibration(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="int8 calibration buffers use torch CUDA")
    model = tiny_classifier_onnx(tmp_path / "model.onnx", size=32)
    calib = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    build = engines.build_tensorrt_engine(model, "int8", calibration_data=calib, out_dir=tmp_path)
    assert build.precision == "int8" and build.path.stat().st_size > 0

"""Engines per hardware target.

Targets are named strings: ``cpu-x86`` (ONNX Runtime, the portable fallback)
and ``gpu-sm<NN>`` for NVIDIA GPUs by compute capability (``gpu-sm87`` Jetson
Orin, ``gpu-sm90`` H100/H200, ...). A TensorRT engine is specific to the GPU
architecture, the TensorRT version and the precision it was built for, so
engines are keyed by :class:`EngineKey` (gpu arch, TensorRT version, precision).

:func:`build_tensorrt_engine` uses the TensorRT Python API (parse ONNX, set
fp16/int8 flags, serialize); it raises :class:`EngineUnavailable` with the
reason where TensorRT or a GPU is absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._errors import EngineUnavailable, StoreError

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

#: known targets -> what they are
TARGETS: dict[str, str] = {
    "cpu-x86": "x86-64 CPU, ONNX Runtime",
    "cpu-arm64": "ARM64 CPU, ONNX Runtime",
    "gpu-sm72": "Jetson Xavier (Volta)",
    "gpu-sm75": "Turing (T4)",
    "gpu-sm80": "Ampere (A100)",
    "gpu-sm86": "Ampere (A10, RTX 30)",
    "gpu-sm87": "Jetson Orin",
    "gpu-sm89": "Ada (L4, L40, RTX 40)",
    "gpu-sm90": "Hopper (H100, H200)",
}

_ARCH_RE = re.compile(r"^sm\d{2,3}$")


def target_for_arch(gpu_arch: str) -> str:
    """``sm87`` -> ``gpu-sm87``."""
    if not _ARCH_RE.match(gpu_arch):
        raise StoreError(f"gpu arch {gpu_arch!r}: expected e.g. 'sm87'", field="gpu_arch")
    return f"gpu-{gpu_arch}"


@dataclass(frozen=True)
class EngineKey:
    gpu_arch: str
    tensorrt: str
    precision: str

    @property
    def target(self) -> str:
        return target_for_arch(self.gpu_arch)

    @property
    def filename(self) -> str:
        return f"{self.target}-trt{self.tensorrt}-{self.precision}.engine"


@dataclass(frozen=True)
class EngineBuild:
    """A built engine file; :func:`algorithm_store.build_package` accepts it."""

    path: Path
    gpu_arch: str
    tensorrt: str
    precision: str
    build_s: float
    cached: bool = False

    @property
    def key(self) -> EngineKey:
        return EngineKey(self.gpu_arch, self.tensorrt, self.precision)

    @property
    def target(self) -> str:
        return target_for_arch(self.gpu_arch)


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as e:
        raise EngineUnavailable(
            f"TensorRT is not installed here ({e}); engines are built on a machine with "
            "TensorRT and the target GPU, ONNX Runtime is used elsewhere"
        ) from None
    return trt


def detect_gpu_arch() -> str:
    """Compute capability of GPU 0 as ``smNN``; :class:`EngineUnavailable` without one."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=compute_cap", "--format=csv,noheader", "-i", "0"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.strip()
            major, minor = out.splitlines()[0].strip().split(".")
            return f"sm{int(major)}{int(minor)}"
        except (subprocess.SubprocessError, ValueError, IndexError, OSError):
            pass
    try:  # Jetson has no nvidia-smi query; torch may know
        import torch  # type: ignore[import-not-found]

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return f"sm{major}{minor}"
    except ImportError:
        pass
    raise EngineUnavailable("no NVIDIA GPU found here (nvidia-smi/CUDA see none)")


def tensorrt_available() -> tuple[bool, str]:
    """(available, reason) for building engines here."""
    try:
        trt = _import_tensorrt()
        arch = detect_gpu_arch()
    except EngineUnavailable as e:
        return False, e.message
    return True, f"TensorRT {trt.__version__} on {arch}"


class _Calibrator:
    """int8 entropy calibrator over an array of calibration inputs [K, ...]."""

    def __new__(cls, trt: Any, data: np.ndarray, batch: int, cache: Path):
        try:
            import torch  # type: ignore[import-not-found]
        except ImportError:
            raise EngineUnavailable(
                "int8 calibration needs torch (CUDA) for device buffers here"
            ) from None

        class Calib(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.IInt8EntropyCalibrator2.__init__(self)
                self.data = np.ascontiguousarray(data.astype(np.float32))
                self.batch = batch
                self.i = 0
                self.buf: Any = None

            def get_batch_size(self) -> int:
                return self.batch

            def get_batch(self, names: list[str]) -> list[int] | None:
                if self.i + self.batch > len(self.data):
                    return None
                chunk = self.data[self.i : self.i + self.batch]
                self.i += self.batch
                self.buf = torch.from_numpy(chunk).cuda()
                return [int(self.buf.data_ptr())]

            def read_calibration_cache(self) -> bytes | None:
                return cache.read_bytes() if cache.is_file() else None

            def write_calibration_cache(self, c: Any) -> None:
                cache.write_bytes(bytes(c))

        return Calib()


def build_tensorrt_engine(
    onnx_path: Path | str,
    precision: Precision = "fp16",
    *,
    out_dir: Path | str | None = None,
    workspace_mb: int = 2048,
    max_batch: int = 8,
    calibration_data: np.ndarray | None = None,
    reuse: bool = True,
) -> EngineBuild:
    """Build a serialized TensorRT engine for the GPU here.

    Parses ``onnx_path`` with the TensorRT ONNX parser, sets FP16 or INT8
    (INT8 needs ``calibration_data`` [K, C, H, W] unless the model carries
    Q/DQ nodes), adds an optimization profile for a dynamic batch dimension
    (1..``max_batch``) and serializes the engine to
    ``<out_dir>/<model stem>.<target>-trt<version>-<precision>.engine``. An
    engine already built for the same key is reused when ``reuse``.
    """
    if precision not in PRECISIONS:
        raise StoreError(f"precision {precision!r}: use one of {PRECISIONS}", field="precision")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise StoreError(f"{onnx_path}: no such ONNX file", field="onnx_path")
    trt = _import_tensorrt()
    arch = detect_gpu_arch()
    key = EngineKey(arch, str(trt.__version__), precision)
    out = Path(out_dir) if out_dir is not None else onnx_path.parent
    out.mkdir(parents=True, exist_ok=True)
    dest = out / f"{onnx_path.stem}.{key.filename}"
    if reuse and dest.is_file() and dest.stat().st_size > 0:
        return EngineBuild(dest, arch, key.tensorrt, precision, 0.0, cached=True)

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(str(trt.__version__).split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise StoreError(f"{onnx_path.name}: TensorRT cannot parse the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)

    profile = None
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        shape = list(inp.shape)
        if any(d < 0 for d in shape[1:]):
            raise StoreError(
                f"{onnx_path.name}: input {inp.name!r} has dynamic non-batch dims {shape}; "
                "export the model with a fixed input size",
                field="onnx_path",
            )
        if shape and shape[0] < 0:
            profile = profile or builder.create_optimization_profile()
            lo = (1, *shape[1:])
            opt = (max(1, max_batch // 2), *shape[1:])
            hi = (max_batch, *shape[1:])
            profile.set_shape(inp.name, lo, opt, hi)
    if profile is not None:
        config.add_optimization_profile(profile)

    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)
        if calibration_data is not None:
            data = np.asarray(calibration_data)
            config.int8_calibrator = _Calibrator(trt, data, 1, dest.with_suffix(".calib"))
            if profile is not None:
                config.set_calibration_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise StoreError(
            f"{onnx_path.name}: TensorRT failed to build a {precision} engine for {arch} "
            "(see the TensorRT log above)"
        )
    tmp = dest.with_name(dest.name + ".partial")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(dest)
    return EngineBuild(dest, arch, key.tensorrt, precision, time.perf_counter() - t0)


__all__ = [
    "PRECISIONS",
    "TARGETS",
    "EngineBuild",
    "EngineKey",
    "EngineUnavailable",
    "build_tensorrt_engine",
    "detect_gpu_arch",
    "target_for_arch",
    "tensorrt_available",
]

"""Model runtimes: ONNX Runtime (CPU, CUDA EP when present) and TensorRT (optional).

Preprocessing and postprocessing follow the manifest. A loaded model is
warmed and must pass its packaged golden check before anyone switches to it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent._errors import GoldenCheckFailed, ModelLoadError
from edge_agent.protocol import Detection, HardwareProfile, InputSpec, Manifest

log = logging.getLogger("edge_agent.runtime")


# ---------------------------------------------------------------------------
# Pre/post-processing
# ---------------------------------------------------------------------------


def preprocess(frame: np.ndarray, spec: InputSpec) -> np.ndarray:
    """BGR uint8 HxWx3 frame -> a batch of one model input tensor."""
    pp = spec.preprocess
    h, w = pp.resize
    img = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
    if pp.color == "RGB":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif pp.color == "GRAY":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]
    if spec.dtype == "uint8":
        x = img
    else:
        x = img.astype(np.float32) * np.float32(pp.scale)
        c = x.shape[2]
        mean = np.asarray(pp.mean[:c], dtype=np.float32)
        std = np.asarray(pp.std[:c], dtype=np.float32)
        x = (x - mean) / std
    if pp.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    x = np.ascontiguousarray(x[None])
    return x.astype(spec.dtype, copy=False)


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)

    def area(b: np.ndarray) -> np.ndarray:
        return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)

    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression; indices kept, best first."""
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        if not order:
            break
        rest = np.asarray(order)
        overlaps = iou(boxes[i], boxes[rest])
        order = [int(j) for j, o in zip(rest, overlaps, strict=True) if o <= iou_threshold]
    return keep


@dataclass
class Result:
    """One frame's model output, post-processed."""

    detections: list[Detection]
    scores: np.ndarray  # classify: class probabilities; detect: every candidate box score
    embedding: np.ndarray | None = None
    inference_ms: float = 0.0
    raw: list[np.ndarray] = field(default_factory=list)


def postprocess(outputs: list[np.ndarray], manifest: Manifest, names: list[str]) -> Result:
    post = manifest.postprocess
    labels = manifest.labels
    embedding = None
    if "embedding" in names:
        embedding = np.asarray(outputs[names.index("embedding")], dtype=np.float32).reshape(-1)
    out = np.asarray(outputs[0])
    if post.output in ("logits", "probabilities"):
        vec = out.reshape(-1, out.shape[-1])[0].astype(np.float32)
        probs = softmax(vec) if post.output == "logits" else vec
        order = np.argsort(-probs)[: post.top_k]
        dets = [
            Detection(label=labels[i], score=float(np.clip(probs[i], 0, 1)))
            for i in order
            if i < len(labels) and probs[i] >= post.score_threshold
        ]
        return Result(dets, probs, embedding, raw=outputs)
    rows = out.reshape(-1, out.shape[-1]) if out.ndim >= 2 else out.reshape(0, 6)
    if rows.shape[-1] < 6:
        raise ModelLoadError(f"boxes output must have 6 columns, got shape {out.shape}")
    rows = rows.astype(np.float32)
    scores_all = rows[:, 4].copy()
    rows = rows[rows[:, 4] >= post.score_threshold]
    dets: list[Detection] = []
    for cls in np.unique(rows[:, 5]).astype(int) if len(rows) else []:
        sel = rows[rows[:, 5].astype(int) == cls]
        for i in nms(sel[:, :4], sel[:, 4], post.nms_iou):
            if 0 <= cls < len(labels):
                x1, y1, x2, y2 = (float(np.clip(v, 0, 1)) for v in sel[i, :4])
                dets.append(
                    Detection(
                        label=labels[cls],
                        score=float(np.clip(sel[i, 4], 0, 1)),
                        box=[x1, y1, x2, y2],
                    )
                )
    dets.sort(key=lambda d: -d.score)
    return Result(dets[: post.top_k], scores_all, embedding, raw=outputs)


# ---------------------------------------------------------------------------
# Loaded models
# ---------------------------------------------------------------------------


class LoadedModel:
    """A model ready to run on frames (one runtime behind it)."""

    runtime: str = "?"

    def __init__(self, manifest: Manifest, sha256: str, package_dir: Path) -> None:
        self.manifest = manifest
        self.sha256 = sha256
        self.package_dir = package_dir
        self.output_names: list[str] = []
        self._lock = threading.Lock()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.manifest.id, self.manifest.version, self.sha256)

    def infer(self, x: np.ndarray) -> list[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, frame: np.ndarray) -> Result:
        x = preprocess(frame, self.manifest.input)
        t0 = time.perf_counter()
        outs = self.infer(x)
        ms = (time.perf_counter() - t0) * 1000
        res = postprocess(outs, self.manifest, self.output_names)
        res.inference_ms = ms
        return res

    def warm(self, runs: int) -> None:
        shape = [1 if isinstance(d, str) or d <= 0 else int(d) for d in self.manifest.input.shape]
        x = np.zeros(shape, dtype=self.manifest.input.dtype)
        for _ in range(runs):
            self.infer(x)

    def golden_check(self) -> float:
        """Run the packaged golden input; raise GoldenCheckFailed if outside tolerance."""
        g = self.manifest.golden
        try:
            x = np.load(self.package_dir / g.input, allow_pickle=False)
            expected = np.load(self.package_dir / g.output, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise GoldenCheckFailed(f"{self.describe()}: golden files unreadable: {e}") from None
        try:
            got = np.asarray(self.infer(x.astype(self.manifest.input.dtype, copy=False))[0])
        except Exception as e:  # noqa: BLE001 - any runtime failure is a failed check
            raise GoldenCheckFailed(f"{self.describe()}: golden input failed to run: {e}") from None
        if got.shape != expected.shape:
            raise GoldenCheckFailed(
                f"{self.describe()}: golden output shape {got.shape} != expected {expected.shape}"
            )
        diff = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.size else 0.0
        if not np.allclose(got, expected, atol=g.atol, rtol=g.rtol):
            raise GoldenCheckFailed(
                f"{self.describe()}: golden check failed (max abs diff {diff:.3g}, "
                f"atol {g.atol}, rtol {g.rtol})"
            )
        return diff

    def describe(self) -> str:
        return f"{self.manifest.id} {self.manifest.version} ({self.runtime})"

    def close(self) -> None:
        pass


class OrtModel(LoadedModel):
    def __init__(
        self,
        manifest: Manifest,
        sha256: str,
        package_dir: Path,
        *,
        prefer_gpu: bool = True,
        threads: int = 0,
    ) -> None:
        super().__init__(manifest, sha256, package_dir)
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if prefer_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(package_dir / manifest.model), sess_options=so, providers=providers
            )
        except Exception as e:  # noqa: BLE001 - ORT raises its own types
            raise ModelLoadError(
                f"{manifest.id} {manifest.version}: ONNX Runtime refused the model: {e}"
            ) from None
        used = self.session.get_providers()
        self.runtime = "onnxruntime-cuda" if "CUDAExecutionProvider" in used else "onnxruntime-cpu"
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: x})


# ---------------------------------------------------------------------------
# TensorRT (optional)
# ---------------------------------------------------------------------------


def tensorrt_available() -> str | None:
    """None when TensorRT can be used, else the reason it cannot."""
    try:
        import tensorrt  # type: ignore[import-not-found]  # noqa: F401
    except Exception:  # noqa: BLE001
        return "TensorRT is not installed on this device; using ONNX Runtime"
    try:
        from cuda.bindings import runtime  # type: ignore[import-not-found]  # noqa: F401
    except Exception:  # noqa: BLE001
        try:
            from cuda import cudart  # type: ignore[import-not-found]  # noqa: F401
        except Exception:  # noqa: BLE001
            return "TensorRT is installed but cuda-python is not; using ONNX Runtime"
    return None


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001
        from cuda import cudart  # type: ignore[import-not-found]
    return cudart


def _ck(ret: Any) -> Any:
    err, *rest = ret if isinstance(ret, tuple) else (ret,)
    if int(err) != 0:
        raise ModelLoadError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


class TrtModel(LoadedModel):
    """A deserialized TensorRT engine (TensorRT >= 10 tensor API)."""

    runtime = "tensorrt"

    def __init__(self, manifest: Manifest, sha256: str, package_dir: Path, engine_path: Path):
        super().__init__(manifest, sha256, package_dir)
        import tensorrt as trt  # type: ignore[import-not-found]

        self._cudart = _cudart()
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise ModelLoadError(f"{manifest.id} {manifest.version}: engine does not deserialize")
        self.context = self.engine.create_execution_context()
        self.stream = _ck(self._cudart.cudaStreamCreate())
        self.inputs: list[str] = []
        self.output_names = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(name)
            else:
                self.output_names.append(name)
        self._trt = trt
        self._buffers: dict[str, tuple[int, int]] = {}

    def _buf(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _ck(self._cudart.cudaFree(ptr))
            ptr = _ck(self._cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        cu = self._cudart
        with self._lock:
            x = np.ascontiguousarray(x)
            name = self.inputs[0]
            self.context.set_input_shape(name, tuple(x.shape))
            ptr = self._buf(name, x.nbytes)
            _ck(
                cu.cudaMemcpyAsync(
                    ptr,
                    x.ctypes.data,
                    x.nbytes,
                    cu.cudaMemcpyKind.cudaMemcpyHostToDevice,
                    self.stream,
                )
            )
            self.context.set_tensor_address(name, ptr)
            outs = []
            for out in self.output_names:
                shape = tuple(self.context.get_tensor_shape(out))
                dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(out)))
                host = np.empty(shape, dtype=dtype)
                optr = self._buf(out, max(host.nbytes, 1))
                self.context.set_tensor_address(out, optr)
                outs.append((host, optr))
            if not self.context.execute_async_v3(self.stream):
                raise ModelLoadError("TensorRT execution failed")
            for host, optr in outs:
                _ck(
                    cu.cudaMemcpyAsync(
                        host.ctypes.data,
                        optr,
                        host.nbytes,
                        cu.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                        self.stream,
                    )
                )
            _ck(cu.cudaStreamSynchronize(self.stream))
            return [h for h, _ in outs]

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self._cudart.cudaFree(ptr)
        self._buffers.clear()


def matching_engine(manifest: Manifest, hw: HardwareProfile) -> str | None:
    """The package engine file built for this device's GPU arch and TensorRT version."""
    if not hw.gpu_arch or not hw.tensorrt:
        return None
    major_minor = ".".join(hw.tensorrt.split(".")[:2])
    best = None
    for e in manifest.engines:
        if e.gpu_arch != hw.gpu_arch:
            continue
        if e.tensorrt == hw.tensorrt:
            return e.file
        if ".".join(e.tensorrt.split(".")[:2]) == major_minor:
            best = best or e.file
    return best


class EngineBuilder:
    """Builds a TensorRT engine from the package ONNX in a background thread."""

    def __init__(self, manifest: Manifest, package_dir: Path, out: Path) -> None:
        self.manifest = manifest
        self.package_dir = package_dir
        self.out = out
        self.progress = 0.0
        self.state = "pending"  # pending | building | done | failed
        self.error: str | None = None
        self.thread = threading.Thread(
            target=self._run, name=f"trt-build-{manifest.id}", daemon=True
        )

    def start(self) -> EngineBuilder:
        self.thread.start()
        return self

    def _run(self) -> None:
        self.state = "building"
        try:
            import tensorrt as trt  # type: ignore[import-not-found]

            logger = trt.Logger(trt.Logger.WARNING)
            builder = trt.Builder(logger)
            network = builder.create_network(0)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse((self.package_dir / self.manifest.model).read_bytes()):
                raise ModelLoadError(f"TensorRT cannot parse the ONNX: {parser.get_error(0)}")
            config = builder.create_builder_config()
            shape = [
                1 if isinstance(d, str) or d <= 0 else int(d) for d in self.manifest.input.shape
            ]
            profile = builder.create_optimization_profile()
            name = network.get_input(0).name
            profile.set_shape(name, shape, shape, shape)
            config.add_optimization_profile(profile)
            builder_ref = self

            class _Progress(trt.IProgressMonitor):  # type: ignore[misc]
                def __init__(self) -> None:
                    trt.IProgressMonitor.__init__(self)

                def phase_start(self, phase_name: str, parent_phase: Any, num_steps: int) -> None:
                    pass

                def step_complete(self, phase_name: str, step: int) -> bool:
                    builder_ref.progress = min(0.99, builder_ref.progress + 0.01)
                    return True

                def phase_finish(self, phase_name: str) -> None:
                    pass

            try:
                config.progress_monitor = _Progress()
            except Exception:  # noqa: BLE001 - older TensorRT: no progress monitor
                pass
            blob = builder.build_serialized_network(network, config)
            if blob is None:
                raise ModelLoadError("TensorRT engine build failed")
            self.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.out.with_suffix(".tmp")
            tmp.write_bytes(bytes(blob))
            tmp.replace(self.out)
            self.progress = 1.0
            self.state = "done"
        except Exception as e:  # noqa: BLE001
            self.error = str(e)
            self.state = "failed"
            log.warning("TensorRT build for %s failed: %s", self.manifest.id, e)


def load_model(
    package_dir: Path,
    manifest: Manifest,
    sha256: str,
    hw: HardwareProfile,
    *,
    prefer_gpu: bool = True,
    threads: int = 0,
) -> LoadedModel:
    """Load the best runtime for this device: a matching prebuilt TensorRT engine,
    else ONNX Runtime (CUDA EP when present, else CPU)."""
    engine = matching_engine(manifest, hw) if prefer_gpu else None
    if engine is not None:
        why = tensorrt_available()
        if why is None:
            try:
                return TrtModel(manifest, sha256, package_dir, package_dir / engine)
            except Exception as e:  # noqa: BLE001
                log.warning(
                    "%s: prebuilt engine %s unusable (%s); using ONNX Runtime",
                    manifest.id,
                    engine,
                    e,
                )
        else:
            log.info("%s: %s", manifest.id, why)
    return OrtModel(manifest, sha256, package_dir, prefer_gpu=prefer_gpu, threads=threads)

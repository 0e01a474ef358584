"""ONNX checks and ONNX Runtime (CPU) execution: model check, external-data
containment, input-spec inference, golden runs and cost profiling."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edge_agent.protocol import CostProfile

from ._errors import ExternalDataEscapes, GoldenMismatch, OnnxInvalid, PackageRejected

#: ONNX TensorProto element type -> manifest dtype
_ONNX_DTYPES = {1: "float32", 10: "float16", 2: "uint8"}


def _iter_tensors(graph: Any):
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _iter_tensors(attr.g)
            for g in attr.graphs:
                yield from _iter_tensors(g)


def external_data_files(model_path: Path, package_root: Path) -> list[str]:
    """Paths (relative to ``package_root``) of the external-data files the model
    references. Raises :class:`ExternalDataEscapes` for any location that is
    absolute, contains ``..`` or resolves (through links) outside the root."""
    import onnx

    model_path = Path(model_path)
    root = Path(package_root).resolve()
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends
        raise OnnxInvalid(f"{model_path.name}: not a loadable ONNX model ({e})") from None
    found: list[str] = []
    for tensor in _iter_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        loc = info.get("location", "")
        p = PurePosixPath(loc)
        if (
            not loc
            or "\\" in loc
            or p.is_absolute()
            or any(part in ("..", "") for part in loc.split("/"))
        ):
            raise ExternalDataEscapes(
                f"{model_path.name}: tensor {tensor.name!r} external data location {loc!r} "
                "escapes the package (must be a relative path inside it)"
            )
        target = (model_path.parent / loc).resolve()
        if not target.is_relative_to(root):
            raise ExternalDataEscapes(
                f"{model_path.name}: tensor {tensor.name!r} external data {loc!r} resolves to "
                f"{target}, outside the package"
            )
        if not target.is_file():
            raise OnnxInvalid(
                f"{model_path.name}: tensor {tensor.name!r} external data file {loc!r} is missing"
            )
        rel = target.relative_to(root).as_posix()
        if rel not in found:
            found.append(rel)
    return found


def check_model(model_path: Path, package_root: Path) -> list[str]:
    """Full ``onnx.checker`` check (with shape inference) after the external-data
    containment check. Returns the external-data files (relative to the root)."""
    import onnx

    files = external_data_files(model_path, package_root)
    try:
        onnx.checker.check_model(str(model_path), full_check=True)
    except Exception as e:  # ValidationError, InferenceError, protobuf decode errors
        text = str(e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        raise OnnxInvalid(
            f"{Path(model_path).name}: onnx.checker refused the model: {first}"
        ) from None
    return files


def graph_input(model_path: Path, name: str | None = None) -> tuple[str, str, list[int | str]]:
    """(name, dtype, shape) of the model input ``name`` (default: the first
    graph input that is not an initializer). Unknown dims become their
    symbolic name, or ``"N"`` for the first one."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise OnnxInvalid(f"{Path(model_path).name}: the graph has no inputs")
    if name is None:
        chosen = inputs[0]
    else:
        matches = [i for i in inputs if i.name == name]
        if not matches:
            raise OnnxInvalid(
                f"{Path(model_path).name}: no graph input named {name!r} "
                f"(inputs: {[i.name for i in inputs]})"
            )
        chosen = matches[0]
    tt = chosen.type.tensor_type
    dtype = _ONNX_DTYPES.get(tt.elem_type)
    if dtype is None:
        raise OnnxInvalid(
            f"{Path(model_path).name}: input {chosen.name!r} has element type {tt.elem_type}; "
            f"supported: {sorted(_ONNX_DTYPES.values())}"
        )
    shape: list[int | str] = []
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            shape.append(d.dim_param)
        else:
            shape.append("N" if i == 0 else f"d{i}")
    return chosen.name, dtype, shape


def concrete_shape(shape: list[int | str], field: str = "input.shape") -> list[int]:
    """Batch (first) symbolic dim -> 1; any other symbolic dim is an error."""
    out: list[int] = []
    for i, d in enumerate(shape):
        if isinstance(d, int):
            out.append(d)
        elif i == 0:
            out.append(1)
        else:
            raise PackageRejected(
                f"{field}: dimension {i} is symbolic ({d!r}); give a concrete input shape",
                field=field,
            )
    return out


def session(model_path: Path, *, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OnnxInvalid(f"{Path(model_path).name}: ONNX Runtime cannot load it: {e}") from None


def run_first_output(model_path: Path, input_name: str, x: np.ndarray, sess=None) -> np.ndarray:
    sess = sess or session(model_path)
    try:
        return np.asarray(sess.run(None, {input_name: x})[0])
    except Exception as e:
        raise OnnxInvalid(
            f"{Path(model_path).name}: ONNX Runtime failed on input {input_name!r} "
            f"shape {list(x.shape)} dtype {x.dtype}: {e}"
        ) from None


def golden_check(
    model_path: Path, input_name: str, x: np.ndarray, expected: np.ndarray, atol: float, rtol: float
) -> None:
    """Run the model on the golden input; refuse if the output differs."""
    got = run_first_output(model_path, input_name, x)
    if got.shape != expected.shape:
        raise GoldenMismatch(
            f"golden check: output shape {list(got.shape)} != golden {list(expected.shape)}"
        )
    if not np.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=True):
        diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
        raise GoldenMismatch(
            f"golden check: output differs from the golden output (max |diff| {diff:.3g}, "
            f"atol {atol}, rtol {rtol})"
        )


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def profile_cpu(
    model_path: Path, input_name: str, x: np.ndarray, weights_bytes: int, *, budget_s: float = 1.0
) -> CostProfile:
    """ms/frame (median over up to 50 runs within ``budget_s``, per batch item)
    and memory (RSS growth while loading and running, at least the weights)."""
    before = _rss_bytes()
    sess = session(model_path)
    for _ in range(2):
        run_first_output(model_path, input_name, x, sess)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 50 and (len(times) < 5 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        sess.run(None, {input_name: x})
        times.append(time.perf_counter() - t0)
    after = _rss_bytes()
    batch = max(1, int(x.shape[0])) if x.ndim else 1
    ms = max(statistics.median(times) * 1000.0 / batch, 1e-3)
    mem = max(after - before, weights_bytes, 1) / (1024 * 1024)
    return CostProfile(ms_per_frame=round(ms, 4), mem_mb=round(max(mem, 0.01), 3), measured=True)

"""Package builder: an ONNX model (the flywheel's or a user's own) becomes a
signed package archive with a golden input/output pair and a measured CPU cost."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edge_agent.protocol import (
    MANIFEST_NAME,
    EngineEntry,
    EventRule,
    FileEntry,
    Golden,
    InputSpec,
    Lineage,
    Manifest,
    Postprocess,
    Preprocess,
    Task,
    check_member_path,
    sha256_file,
    write_package_archive,
)

from . import _onnx
from ._errors import PackageRejected
from ._keys import sign_manifest

MODEL_NAME = "model.onnx"
CPU_TARGET = "cpu-x86"


class EngineFile(Protocol):
    """What :func:`build_package` needs to know about a prebuilt engine
    (an :class:`algorithm_store.engines.EngineBuild` fits)."""

    path: Path
    gpu_arch: str
    tensorrt: str
    precision: str
    target: str


@dataclass(frozen=True)
class BuiltPackage:
    archive: Path
    manifest: Manifest
    sha256: str
    size: int


def _model(cls: type, value: Any, field: str) -> Any:
    if value is None or isinstance(value, cls):
        return value
    try:
        return cls.model_validate(value)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise PackageRejected(f"{field}.{loc}: {err['msg']}", field=field) from None


def _default_preprocess(shape: Sequence[int | str], layout: str = "NCHW") -> Preprocess:
    if len(shape) == 4:
        h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
        if isinstance(h, int) and isinstance(w, int):
            c = shape[1] if layout == "NCHW" else shape[3]
            color = "GRAY" if c == 1 else "RGB"
            n = 1 if c == 1 else 3
            return Preprocess(
                resize=(h, w), color=color, layout=layout, mean=[0.0] * n, std=[1.0] * n
            )
    raise PackageRejected(
        f"preprocess: cannot infer resize/layout from input shape {list(shape)}; "
        "give preprocess (resize, color, scale, mean, std, layout)",
        field="preprocess",
    )


def _golden_input(given: np.ndarray | Path | str | None, spec: InputSpec, seed: int) -> np.ndarray:
    if given is not None:
        if isinstance(given, str | Path):
            try:
                given = np.load(Path(given), allow_pickle=False)
            except (OSError, ValueError) as e:
                raise PackageRejected(
                    f"golden_input: cannot read {given}: {e}", field="golden_input"
                ) from None
        x = np.asarray(given)
        if x.dtype != np.dtype(spec.dtype):
            raise PackageRejected(
                f"golden_input: dtype {x.dtype} != input dtype {spec.dtype}",
                field="golden_input",
            )
        if len(x.shape) != len(spec.shape) or any(
            isinstance(d, int) and d != s for d, s in zip(spec.shape, x.shape, strict=False)
        ):
            raise PackageRejected(
                f"golden_input: shape {list(x.shape)} does not fit input shape {spec.shape}",
                field="golden_input",
            )
        return x
    shape = _onnx.concrete_shape(spec.shape)
    rng = np.random.default_rng(seed)
    if spec.dtype == "uint8":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.random(shape, dtype=np.float32).astype(spec.dtype)


def _place(src: Path, dest_root: Path, rel: str) -> FileEntry:
    check_member_path(rel)
    dest = dest_root / rel
    if dest.exists():
        raise PackageRejected(f"{rel}: two package files would share this path", field="files")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return FileEntry(sha256=sha256_file(dest), size=dest.stat().st_size)


def build_package(
    onnx_path: Path | str,
    *,
    id: str,
    version: str,
    task: Task | str,
    labels: Sequence[str],
    private_key: Ed25519PrivateKey,
    out_dir: Path | str,
    input: InputSpec | Mapping[str, Any] | None = None,
    preprocess: Preprocess | Mapping[str, Any] | None = None,
    postprocess: Postprocess | Mapping[str, Any] | None = None,
    event_rules: Iterable[EventRule | Mapping[str, Any]] = (),
    scenes: Sequence[str] = (),
    detects: Sequence[str] = (),
    fps: float = 2.0,
    metrics: Mapping[str, float] | None = None,
    lineage: Lineage | Mapping[str, Any] | None = None,
    embedding_summary: Path | str | None = None,
    engines: Iterable[EngineFile] = (),
    golden_input: np.ndarray | Path | str | None = None,
    golden_seed: int = 0,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    name: str = "",
    description: str = "",
    profile: bool = True,
) -> BuiltPackage:
    """Build, sign and archive a package from an ONNX model.

    The model gets a full ``onnx.checker`` check; external-data files must lie
    beside the model (inside the package) and are copied with it. The input
    spec is read from the graph when not given. A golden input (``golden_input``
    or a seeded random tensor) and the model's output on it (ONNX Runtime CPU)
    go into ``golden/``; the CPU cost is measured. The archive is
    ``<out_dir>/<id>-<version>.tar``; an existing one is never overwritten.
    """
    onnx_path = Path(onnx_path)
    out_dir = Path(out_dir)
    if not onnx_path.is_file():
        raise PackageRejected(f"{onnx_path}: no such ONNX file", field="onnx_path")
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / f"{id}-{version}.tar"
    if archive.exists():
        raise PackageRejected(
            f"{archive}: already exists; refusing to overwrite it", field="out_dir"
        )

    ext_files = _onnx.check_model(onnx_path, onnx_path.parent)

    spec = _model(InputSpec, input, "input")
    if spec is None:
        name_, dtype, shape = _onnx.graph_input(onnx_path)
        pre = _model(Preprocess, preprocess, "preprocess") or _default_preprocess(shape)
        spec = InputSpec(name=name_, dtype=dtype, shape=shape, preprocess=pre)
    else:
        g_name, g_dtype, g_shape = _onnx.graph_input(onnx_path, spec.name)
        if spec.dtype != g_dtype:
            raise PackageRejected(
                f"input.dtype: {spec.dtype} but the graph input {g_name!r} is {g_dtype}",
                field="input.dtype",
            )
        if len(spec.shape) != len(g_shape):
            raise PackageRejected(
                f"input.shape: {spec.shape} has {len(spec.shape)} dims, the graph input has "
                f"{len(g_shape)} ({g_shape})",
                field="input.shape",
            )
    task = Task(task)
    post = _model(Postprocess, postprocess, "postprocess") or Postprocess(
        output="logits" if task is Task.CLASSIFY else "boxes"
    )
    rules = [_model(EventRule, r, "event_rules") for r in event_rules]
    lin = _model(Lineage, lineage, "lineage") or Lineage()
    golden = Golden(atol=atol, rtol=rtol)

    x = _golden_input(golden_input, spec, golden_seed)
    y = _onnx.run_first_output(onnx_path, spec.name, x)

    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=out_dir))
    try:
        files: dict[str, FileEntry] = {}
        files[MODEL_NAME] = _place(onnx_path, staging, MODEL_NAME)
        root = onnx_path.parent.resolve()
        weights = onnx_path.stat().st_size
        for rel in ext_files:
            if rel in (MODEL_NAME, MANIFEST_NAME) or rel.startswith("golden/"):
                raise PackageRejected(
                    f"external data file {rel!r} collides with a reserved package path",
                    field="onnx_path",
                )
            files[rel] = _place(root / rel, staging, rel)
            weights += files[rel].size
        for rel, arr in ((golden.input, x), (golden.output, y)):
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            with open(staging / rel, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            files[rel] = FileEntry(
                sha256=sha256_file(staging / rel), size=(staging / rel).stat().st_size
            )
        summary_rel = None
        if embedding_summary is not None:
            src = Path(embedding_summary)
            if not src.is_file():
                raise PackageRejected(f"{src}: no such file", field="embedding_summary")
            summary_rel = "embedding_summary.npy"
            files[summary_rel] = _place(src, staging, summary_rel)
        engine_entries: list[EngineEntry] = []
        for eng in engines:
            src = Path(eng.path)
            if not src.is_file():
                raise PackageRejected(f"{src}: engine file missing", field="engines")
            rel = f"engines/{eng.target}-trt{eng.tensorrt}-{eng.precision}.engine"
            files[rel] = _place(src, staging, rel)
            engine_entries.append(
                EngineEntry(
                    target=eng.target,
                    gpu_arch=eng.gpu_arch,
                    tensorrt=eng.tensorrt,
                    precision=eng.precision,  # type: ignore[arg-type]
                    file=rel,
                )
            )
        cost = {}
        if profile:
            cost[CPU_TARGET] = _onnx.profile_cpu(staging / MODEL_NAME, spec.name, x, weights)
        try:
            manifest = Manifest(
                id=id,
                version=version,
                name=name,
                description=description,
                task=task,
                labels=list(labels),
                model=MODEL_NAME,
                input=spec,
                postprocess=post,
                event_rules=rules,
                scenes=list(scenes),
                detects=list(detects),
                fps=fps,
                cost=cost,
                engines=engine_entries,
                golden=golden,
                metrics=dict(metrics or {}),
                lineage=lin,
                embedding_summary=summary_rel,
                files=files,
            )
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "manifest"
            raise PackageRejected(f"manifest {loc}: {err['msg']}", field=loc) from None
        signed = sign_manifest(manifest, private_key)
        (staging / MANIFEST_NAME).write_bytes(
            signed.model_dump_json(by_alias=True, indent=2).encode()
        )
        tmp_archive = out_dir / f".{archive.name}.partial"
        write_package_archive(staging, tmp_archive)
        if archive.exists():
            tmp_archive.unlink()
            raise PackageRejected(f"{archive}: already exists; refusing to overwrite it")
        tmp_archive.replace(archive)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuiltPackage(
        archive=archive, manifest=signed, sha256=sha256_file(archive), size=archive.stat().st_size
    )

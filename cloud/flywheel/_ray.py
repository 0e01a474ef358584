"""Embeddings of a dataset's samples, in-process or fanned out over Ray.

:func:`embed_dataset` computes the embeddings a backbone has not stored yet
(incremental). :func:`choose_executor` decides where: jobs with fewer missing
samples than ``Settings.ray_min_samples`` run in-process (starting Ray costs
more than it saves), bigger ones on Ray; the choice and its reason come back as
an :class:`EmbedRun` that tasks record.

On Ray a pool of actors (one CPU each, spread over the nodes) loads the
backbone once per actor, from bytes put once in the object store, and embeds
batches. Results are appended to the embedding store in sample order as soon
as every earlier batch is in, so an interrupted job keeps what it finished and
a rerun computes only what is missing. In-process and Ray give the same
vectors (same decoding, same model; float differences only from batching).

Where Ray is: ``Settings.ray_address``, else ``RAY_ADDRESS``, else a local
``ray.init()`` (kept for the life of the process, as a job worker wants).

Workers never open the catalog database. By default the driver reads each
batch's encoded images from the blob store and sends the bytes, which works on
any cluster. With ``Settings.ray_blob_paths`` it sends blob file paths instead:
that assumes the data dir is mounted at the same path on every node (a shared
volume: NFS, a ReadWriteMany PVC). Workers check every image's sha256 either
way, and import ``cloud`` themselves (the cluster's image must have citybrain
installed, as deploy/'s KubeRay manifests do).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from cloud.errors import CitybrainError, InvalidInput, Unavailable

if TYPE_CHECKING:
    from cloud.catalog import Catalog
    from cloud.core.config import Settings
    from cloud.flywheel._backbones import Backbone
    from cloud.flywheel._pipeline import EmbeddingStore

Progress = Callable[[float, str], None]
Executor = Literal["auto", "local", "ray"]

#: object store of a local ``ray.init()`` (a cluster sizes its own)
LOCAL_OBJECT_STORE_BYTES = 256 << 20
#: batches in flight per actor (one running, one queued behind it)
IN_FLIGHT_PER_ACTOR = 2


class EmbedRun(BaseModel):
    """What an embedding job did, and why there."""

    executor: Literal["local", "ray"] = Field(description="where the embeddings were computed")
    reason: str = Field(description="why there")
    samples: int = Field(description="samples embedded by this run")
    already: int = Field(description="samples that had an embedding for this backbone")
    batch: int = Field(description="images per batch (per Ray task)")
    backbone: str = Field(description="backbone name (the embedding store's key)")
    seconds: float = Field(description="wall time of the run")
    workers: int = Field(default=0, description="Ray actors used")
    address: str | None = Field(default=None, description="GCS address of the Ray cluster")
    nodes: dict[str, int] = Field(
        default_factory=dict, description="Ray node id -> batches it embedded"
    )


def choose_executor(
    n_todo: int, settings: Settings, executor: Executor = "auto"
) -> tuple[Literal["local", "ray"], str]:
    """Where an embedding job of ``n_todo`` missing samples runs, and why."""
    if executor not in ("auto", "local", "ray"):
        raise InvalidInput(
            f"executor must be auto, local or ray, got {executor!r}", field="executor"
        )
    if executor != "auto":
        return executor, f"{executor} requested"
    if n_todo == 0:
        return "local", "nothing to embed"
    if n_todo < settings.ray_min_samples:
        return "local", (
            f"{n_todo} samples < ray_min_samples={settings.ray_min_samples}: in-process "
            "(starting Ray would cost more than it saves)"
        )
    return "ray", f"{n_todo} samples >= ray_min_samples={settings.ray_min_samples}"


def connect(settings: Settings) -> str:
    """Connect this process to Ray (no-op when already connected) and return
    the cluster's GCS address."""
    import ray

    if not ray.is_initialized():
        address = settings.ray_address or os.environ.get("RAY_ADDRESS") or None
        kw: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
        if address:
            _reachable(address)
        try:
            if address:
                ray.init(address=address, **kw)
            else:
                ray.init(
                    include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **kw
                )
        except (ConnectionError, TimeoutError, RuntimeError) as e:
            where = address or "a local Ray"
            raise Unavailable(
                f"cannot start or reach Ray ({where}): {str(e).splitlines()[0][:300]}; "
                "check CITYBRAIN_RAY_ADDRESS / RAY_ADDRESS"
            ) from None
    return str(ray.get_runtime_context().gcs_address)


def _reachable(address: str) -> None:
    """Fail fast on a ``host:port`` nobody answers (ray.init would retry for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # auto, ray://...: left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise Unavailable(
            f"no Ray answers at {address} ({e.strerror or e}): "
            "check CITYBRAIN_RAY_ADDRESS / RAY_ADDRESS"
        ) from None


# ---------------------------------------------------------------------------
# What workers get: images as bytes or paths, the backbone as bytes
# ---------------------------------------------------------------------------


def decode_rgb(data: bytes, size: int, sample_id: str = "") -> np.ndarray:
    """An encoded image -> uint8 RGB [size, size, 3] (area resize): the one
    decoding of the in-process and the Ray paths."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None:
        raise InvalidInput(f"sample {sample_id[:12]} does not decode as an image", field="sample")
    return cv2.cvtColor(
        cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB
    )


def _read_checked(item: bytes | str, sample_id: str) -> bytes:
    """Blob bytes (sent or read from a shared path), sha256-checked against the id."""
    if isinstance(item, str):
        try:
            item = Path(item).read_bytes()
        except OSError as e:
            raise Unavailable(
                f"Ray worker cannot read blob {sample_id[:12]} at {item}: {e.strerror} "
                "(ray_blob_paths needs the data dir at the same path on every node)"
            ) from None
    if hashlib.sha256(item).hexdigest() != sample_id:
        raise InvalidInput(f"blob {sample_id[:12]} is corrupt (sha256 differs)", field="sample")
    return item


def backbone_payload(backbone: Backbone) -> dict[str, Any]:
    """The backbone as plain bytes + metadata, loadable by :func:`load_payload`
    on any worker (TorchScript cannot be pickled; ONNX sessions neither)."""
    from cloud.flywheel._backbones import OnnxBackbone, TorchBackbone

    meta = {"name": backbone.name, "input_size": backbone.input_size, "dim": backbone.dim}
    if isinstance(backbone, OnnxBackbone):
        if backbone.source is None:
            raise InvalidInput(
                f"ONNX backbone {backbone.name} has no source file to send to Ray workers",
                field="backbone",
            )
        return meta | {
            "kind": "onnx",
            "data": Path(backbone.source).read_bytes(),
            "input_name": backbone.input_name,
        }
    if isinstance(backbone, TorchBackbone):
        import torch

        buf = io.BytesIO()
        if isinstance(backbone.module, torch.jit.ScriptModule):
            torch.jit.save(backbone.module, buf)
            kind = "torchscript"
        else:
            torch.save(backbone.module, buf)
            kind = "torch"
        return meta | {"kind": kind, "data": buf.getvalue()}
    raise InvalidInput(
        f"backbone {backbone.name} ({type(backbone).__name__}) cannot be sent to Ray workers",
        field="backbone",
    )


def load_payload(payload: dict[str, Any], threads: int = 1) -> Backbone:
    """The backbone of :func:`backbone_payload`, using ``threads`` CPU threads."""
    from cloud.flywheel._backbones import OnnxBackbone, TorchBackbone

    name, size, dim = payload["name"], payload["input_size"], payload["dim"]
    if payload["kind"] == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(payload["data"], opts, providers=["CPUExecutionProvider"])
        return OnnxBackbone(sess, name, size, dim, payload["input_name"])
    import torch

    torch.set_num_threads(threads)
    buf = io.BytesIO(payload["data"])
    if payload["kind"] == "torchscript":
        module = torch.jit.load(buf, map_location="cpu")
    else:
        module = torch.load(buf, map_location="cpu", weights_only=False)
    return TorchBackbone(module.eval(), name, size, dim)


class EmbedWorker:
    """A Ray actor: the backbone, loaded once, embedding batches of images."""

    def __init__(self, payload: dict[str, Any], threads: int = 1) -> None:
        import ray

        self.backbone = load_payload(payload, threads)
        self.node_id = ray.get_runtime_context().get_node_id()

    def embed(
        self, items: Sequence[bytes | str], sample_ids: Sequence[str]
    ) -> tuple[str, np.ndarray]:
        """(this node's id, float32 [N, dim]) for one batch."""
        size = self.backbone.input_size
        images = np.empty((len(items), size, size, 3), np.uint8)
        for i, (item, sid) in enumerate(zip(items, sample_ids, strict=True)):
            images[i] = decode_rgb(_read_checked(item, sid), size, sid)
        return self.node_id, self.backbone.embed(images)


# ---------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------


def embed_dataset(
    catalog: Catalog,
    backbone: Backbone,
    sample_ids: Sequence[str],
    *,
    batch: int = 256,
    executor: Executor = "auto",
    progress: Progress | None = None,
) -> tuple[EmbeddingStore, EmbedRun]:
    """Compute the embeddings of ``sample_ids`` that ``backbone`` has not
    stored yet; in-process or on Ray (:func:`choose_executor`)."""
    from cloud.flywheel._pipeline import embedding_store

    if batch < 1:
        raise InvalidInput(f"batch must be >= 1, got {batch}", field="batch")
    store = embedding_store(catalog, backbone)
    wanted = list(dict.fromkeys(sample_ids))
    todo = store.missing(wanted)
    where, reason = choose_executor(len(todo), catalog.settings, executor)
    run = EmbedRun(
        executor=where,
        reason=reason,
        samples=len(todo),
        already=len(wanted) - len(todo),
        batch=batch,
        backbone=backbone.name,
        seconds=0.0,
    )
    t0 = time.perf_counter()
    batches = [todo[i : i + batch] for i in range(0, len(todo), batch)]
    if where == "local":
        _embed_local(catalog, backbone, store, batches, progress)
    elif batches:
        _embed_ray(catalog, backbone, store, batches, run, progress)
    run.seconds = time.perf_counter() - t0
    return store, run


def _report(progress: Progress | None, done: int, total: int, where: str) -> None:
    if progress:
        progress(min(1.0, done / max(1, total)), f"embedded {done}/{total}{where}")


def _embed_local(
    catalog: Catalog,
    backbone: Backbone,
    store: EmbeddingStore,
    batches: list[list[str]],
    progress: Progress | None,
) -> None:
    from cloud.flywheel._pipeline import load_images

    total, done = sum(map(len, batches)), 0
    for ids in batches:
        store.add(ids, backbone.embed(load_images(catalog, ids, backbone.input_size)))
        done += len(ids)
        _report(progress, done, total, "")


def _embed_ray(
    catalog: Catalog,
    backbone: Backbone,
    store: EmbeddingStore,
    batches: list[list[str]],
    run: EmbedRun,
    progress: Progress | None,
) -> None:
    total, done = sum(map(len, batches)), 0

    def deliver(b: int, vectors: np.ndarray, where: str) -> None:
        nonlocal done
        store.add(batches[b], vectors)
        done += len(batches[b])
        _report(progress, done, total, where)

    run.address, run.workers, run.nodes = fan_out(
        catalog,
        backbone_payload(backbone),
        batches,
        deliver,
        started=lambda where: _report(progress, 0, total, where),
    )


def model_payload(
    onnx: bytes, name: str, input_size: int, outputs: int, input_name: str
) -> dict[str, Any]:
    """A whole ONNX model (image -> ``[N, outputs]``, e.g. a classifier's
    logits) in the form :func:`load_payload` loads, so the embedding workers
    can run it too."""
    return {
        "kind": "onnx",
        "data": onnx,
        "input_name": input_name,
        "name": name,
        "input_size": input_size,
        "dim": outputs,
    }


def fan_out(
    catalog: Catalog,
    payload: dict[str, Any],
    batches: Sequence[Sequence[str]],
    deliver: Callable[[int, np.ndarray, str], None],
    *,
    started: Callable[[str], None] | None = None,
) -> tuple[str, int, dict[str, int]]:
    """Run ``payload``'s model over the images of ``batches`` on a pool of Ray
    actors; ``deliver(batch_no, outputs, where)`` is called in batch order as
    soon as every earlier batch is in (so a caller that keeps each delivered
    batch can resume after an interruption). Returns (GCS address, actors,
    node id -> batches it ran). A worker's :class:`CitybrainError` reaches the
    caller as itself."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    settings = catalog.settings
    address = connect(settings)
    by_path = settings.ray_blob_paths and hasattr(catalog.blobs, "path")
    ref = ray.put(payload)
    cpus = int(ray.available_resources().get("CPU", 0))
    workers = max(1, min(len(batches), cpus))
    worker_cls = ray.remote(num_cpus=1, max_restarts=2, max_task_retries=2)(EmbedWorker)
    actors = [worker_cls.options(scheduling_strategy="SPREAD").remote(ref) for _ in range(workers)]
    where = f" on Ray ({workers} workers)"
    if started:
        started(where)

    def items(ids: Sequence[str]) -> list[bytes | str]:
        if by_path:
            return [str(Path(catalog.blobs.path(s)).resolve()) for s in ids]
        return [catalog.blobs.get(s) for s in ids]

    nodes: Counter[str] = Counter()
    pending: dict[Any, tuple[int, int]] = {}  # ref -> (batch no, actor no)
    load = [0] * len(actors)
    results: dict[int, np.ndarray] = {}
    submitted = written = 0
    window = IN_FLIGHT_PER_ACTOR * len(actors)
    try:
        while written < len(batches):
            # keep every actor busy, and the out-of-order buffer bounded
            while submitted < len(batches) and submitted - written < window:
                a = min(range(len(actors)), key=load.__getitem__)
                if load[a] >= IN_FLIGHT_PER_ACTOR:
                    break
                ids = batches[submitted]
                pending[actors[a].embed.remote(items(ids), list(ids))] = (submitted, a)
                load[a] += 1
                submitted += 1
            ready, _ = ray.wait(list(pending), num_returns=1)
            b, a = pending.pop(ready[0])
            load[a] -= 1
            try:
                node, vectors = ray.get(ready[0])
            except RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, CitybrainError):
                    raise cause from None
                raise
            except RayActorError as e:
                raise Unavailable(f"a Ray worker died: {str(e)[:300]}") from None
            results[b] = vectors
            nodes[node] += 1
            while written in results:  # in batch order, as soon as the prefix is complete
                deliver(written, results.pop(written), f"{where}, {len(nodes)} nodes so far")
                written += 1
    finally:
        for actor in actors:
            ray.kill(actor)
    return address, workers, dict(nodes)

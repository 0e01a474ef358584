"""Ray Serve deployments of published algorithm versions.

One deployment (and one Serve application) per ``algorithm@version``. A
replica fetches the package from the store (a store folder it can read, or
the store's HTTP artifact URL), checks the archive's sha256 against the index
and the manifest signature against the store's public key, then serves
requests of one or more images: ``@serve.batch`` groups small ones into model
calls, a request of ``max_batch_size`` images runs at once.

Where serving time went (benchmarks/serving_bench.py, CPU per image over every
process): serialising full frames (230 KB each) through the object store, and
Serve's per-request machinery. :func:`predict` therefore resizes frames to the
model input before sending (the replica would do the same resize, so results
are identical), stacks a chunk into one array and sends it by value over
Serve's gRPC transport; full requests skip the batch queue.

Ray is imported only inside functions: importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cloud.serving._config import ServingConfig
from cloud.serving._errors import BadImage, InvalidRequest, PackageUnusable, RayUnavailable
from cloud.serving._predictor import (
    Prediction,
    Predictor,
    _check_image,
    read_published_info,
    resize_to,
    resolve_channel,
)


class PackageSource(BaseModel):
    """Where a replica reads the package from, and what it must verify."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: str = Field(description="algorithm id")
    version: str = Field(description="published version")
    sha256: str = Field(pattern="^[0-9a-f]{64}$", description="archive sha256 from the store index")
    public_key_hex: str = Field(
        pattern="^[0-9a-f]{64}$", description="raw ed25519 public key of the store, hex"
    )
    store_dir: str | None = Field(
        default=None, description="store root readable by the replica (local disk, shared volume)"
    )
    artifact_url: str | None = Field(
        default=None,
        description="base URL of the store's artifacts (GET <url>/<sha256>), used when "
        "store_dir is not set, e.g. http://citybrain-api:8000/api/v1/store/artifacts",
    )

    def fetch(self) -> bytes:
        """The archive bytes, sha256-checked."""
        if self.store_dir:
            import algorithm_store as st

            try:
                path, _ = st.AlgorithmStore(self.store_dir).published_artifact(self.sha256)
            except st.StoreError as e:
                raise PackageUnusable(str(e), field="sha256") from None
            data = path.read_bytes()
        elif self.artifact_url:
            url = f"{self.artifact_url.rstrip('/')}/{self.sha256}"
            with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (http(s) only)
                data = resp.read()
        else:
            raise PackageUnusable("package source needs store_dir or artifact_url", field="source")
        got = hashlib.sha256(data).hexdigest()
        if got != self.sha256:
            raise PackageUnusable(
                f"{self.algorithm} {self.version}: archive sha256 {got} != {self.sha256}",
                field="sha256",
            )
        return data

    def load(self, config: ServingConfig) -> Predictor:
        return Predictor.from_archive(
            self.fetch(),
            bytes.fromhex(self.public_key_hex),
            expected_sha256=self.sha256,
            intra_op_threads=config.intra_op_threads,
            providers=config.providers,
        )


def deployment_name(algorithm: str, version: str) -> str:
    """Serve deployment/application name of ``algorithm@version``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{algorithm}@{version}")


def request_size(requests: Sequence[Sequence[np.ndarray]]) -> int:
    """Images in a list of requests (``batch_size_fn`` of ``@serve.batch``)."""
    return sum(len(r) for r in requests)


def is_single(request: Any) -> bool:
    """Whether a request is one image (not a list or a stacked [N, H, W, C] array)."""
    return isinstance(request, np.ndarray) and request.ndim != 4


class BatchCore:
    """What a replica does, without Ray. A request is one image or a list of
    up to ``max_batch_size`` images; it is validated outside the batch (a bad
    request fails alone); a batch of requests is flattened into one model call
    and the predictions are split back per request."""

    def __init__(self, predictor: Predictor, config: ServingConfig) -> None:
        self.predictor = predictor
        self.config = config
        #: images per model call -> how many calls had it (what @serve.batch formed)
        self.batch_sizes: Counter[int] = Counter()
        #: seconds spent in model calls (preprocess + ORT + postprocess)
        self.busy_s = 0.0

    def check(self, request: Any) -> list[np.ndarray]:
        """The validated images of one request: one image (HxW[xC]), a list of
        them, or a stacked uint8 array [N, H, W, C] (one buffer to serialize)."""
        if isinstance(request, np.ndarray) and request.ndim == 4:
            if request.dtype != np.uint8:
                raise BadImage(f"images: dtype must be uint8, got {request.dtype}", field="images")
            request = list(request)
        images = [request] if isinstance(request, np.ndarray) else request
        if not isinstance(images, list | tuple) or not images:
            raise InvalidRequest(
                "a request is one uint8 image or a non-empty list of them", field="images"
            )
        if len(images) > self.config.max_batch_size:
            raise InvalidRequest(
                f"{len(images)} images in one request; at most max_batch_size="
                f"{self.config.max_batch_size} (split it, e.g. with predict(..., chunk=...))",
                field="images",
            )
        return [_check_image(i, img) for i, img in enumerate(images)]

    def decode(self, data: bytes) -> np.ndarray:
        """An encoded image (JPEG, PNG, ...) from an HTTP body -> uint8 BGR."""
        import cv2

        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if img is None:
            raise BadImage(
                f"request body ({len(data)} bytes) is not a decodable image", field="body"
            )
        return img

    def run_batch(self, requests: Sequence[Sequence[np.ndarray]]) -> list[list[Prediction]]:
        flat = [img for r in requests for img in r]
        t0 = time.perf_counter()
        preds = self.predictor.predict(flat, color_order=self.config.color_order)  # type: ignore[arg-type]
        self.busy_s += time.perf_counter() - t0
        self.batch_sizes[len(flat)] += 1
        out: list[list[Prediction]] = []
        pos = 0
        for r in requests:
            out.append(preds[pos : pos + len(r)])
            pos += len(r)
        return out

    def info(self) -> dict[str, Any]:
        m = self.predictor.manifest
        return {
            "algorithm": m.id,
            "version": m.version,
            "labels": list(m.labels),
            "task": m.task,
            "max_batch_size": self.config.max_batch_size,
            "input_hw": list(m.input.preprocess.resize),
            "batch_sizes": dict(self.batch_sizes),
            "busy_s": self.busy_s,
        }


def _deployment_class() -> Any:
    """The ``@serve.deployment`` class (built on first use, so Ray is imported lazily)."""
    try:
        from ray import serve
    except ImportError as e:  # pragma: no cover - ray is in the cloud extra
        raise RayUnavailable(f"Ray Serve is not installed: {e}") from None

    @serve.deployment(name="algorithm")
    class AlgorithmDeployment:
        def __init__(self, source: dict[str, Any], config: dict[str, Any]) -> None:
            cfg = ServingConfig.model_validate(config)
            self.core = BatchCore(PackageSource.model_validate(source).load(cfg), cfg)
            self._batched.set_max_batch_size(cfg.max_batch_size)
            self._batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005, batch_size_fn=request_size)
        async def _batched(self, requests: list[list[np.ndarray]]) -> list[list[Prediction]]:
            return self.core.run_batch(requests)

        async def __call__(self, request: Any) -> Any:
            """Handle: one image -> its Prediction; a list -> their Predictions.
            HTTP (Serve proxy, e.g. a RayService): POST an encoded image as the
            body -> the prediction as JSON (400 with a message if undecodable)."""
            if hasattr(request, "body") and hasattr(request, "headers"):
                from starlette.responses import JSONResponse

                try:
                    img = self.core.decode(await request.body())
                except BadImage as e:
                    return JSONResponse(
                        {"error": {"type": "invalid_input", "message": str(e), "field": e.field}},
                        status_code=400,
                    )
                return (await self._batched([img]))[0].model_dump()
            images = self.core.check(request)
            if len(images) == self.core.config.max_batch_size:
                # already a full batch: run it now, without the batch queue's
                # tasks and futures (a third of a replica's CPU at 8 images)
                preds = self.core.run_batch([images])[0]
            else:
                preds = await self._batched(images)
            return preds[0] if is_single(request) else preds

        def info(self) -> dict[str, Any]:
            return self.core.info()

    return AlgorithmDeployment


def build_application(source: PackageSource, config: ServingConfig | None = None) -> Any:
    """A bound Serve application serving ``source`` with ``config``."""
    config = config or ServingConfig()
    cls = _deployment_class()
    return cls.options(
        name=deployment_name(source.algorithm, source.version), **config.deployment_options()
    ).bind(source.model_dump(), config.model_dump())


def source_for(
    store: Any, algorithm: str, version: str, *, artifact_url: str | None = None
) -> PackageSource:
    """The :class:`PackageSource` of a published version of ``store``."""
    sha, public_key = read_published_info(store, algorithm, version)
    return PackageSource(
        algorithm=algorithm,
        version=version,
        sha256=sha,
        public_key_hex=public_key.hex(),
        store_dir=None if artifact_url else str(Path(store.root).resolve()),
        artifact_url=artifact_url,
    )


def deploy_version(
    store: Any,
    algorithm: str,
    version: str,
    config: ServingConfig | None = None,
    *,
    artifact_url: str | None = None,
    route_prefix: str | None = None,
) -> Any:
    """Deploy ``algorithm@version`` on the connected Ray (``ray.init`` first, or
    Serve starts a local Ray) and return its ``DeploymentHandle``. With
    ``route_prefix`` it is also reachable over HTTP through the Serve proxy
    (POST an encoded image). Redeploying the same version with another config
    updates it in place."""
    from ray import serve

    source = source_for(store, algorithm, version, artifact_url=artifact_url)
    name = deployment_name(algorithm, version)
    # serve.run returns once every replica has loaded the package (or raises)
    handle = serve.run(build_application(source, config), name=name, route_prefix=route_prefix)
    try:
        # requests by value over Serve's gRPC transport: no object store round
        # trip per request (cheaper for frames; benchmarks/serving_bench.py)
        return handle.options(_by_reference=False)
    except TypeError:  # a Ray without the option
        return handle


def deploy_channel(
    store: Any,
    algorithm: str,
    channel: str,
    config: ServingConfig | None = None,
    *,
    artifact_url: str | None = None,
    route_prefix: str | None = None,
) -> Any:
    """Deploy the version ``channel`` points at (e.g. ``stable``)."""
    version = resolve_channel(store, algorithm, channel)
    return deploy_version(
        store, algorithm, version, config, artifact_url=artifact_url, route_prefix=route_prefix
    )


def undeploy(algorithm: str, version: str) -> None:
    """Delete the Serve application of ``algorithm@version``."""
    from ray import serve

    serve.delete(deployment_name(algorithm, version))


_INPUT_HW: dict[tuple[str, str], list[int]] = {}


def input_hw(handle: Any) -> list[int]:
    """[H, W] of the model behind ``handle`` (asked once per deployment: a
    deployment name pins the version, hence the package and its input)."""
    key = (str(getattr(handle, "app_name", "")), str(getattr(handle, "deployment_name", "")))
    if key not in _INPUT_HW or not all(key):
        _INPUT_HW[key] = list(handle.info.remote().result()["input_hw"])
    return _INPUT_HW[key]


def _sendable(img: Any, hw: Sequence[int] | None) -> Any:
    """A valid frame shrunk to the model input (same result, a fraction of the
    bytes to serialize); anything else as is, for the replica to refuse."""
    ok = isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.size > 0
    if hw is None or not ok or img.ndim not in (2, 3):
        return img
    if img.ndim == 2:
        img = img[:, :, None]
    return resize_to(img, hw) if img.shape[2] in (1, 3) else img


def requests_for(
    images: Sequence[np.ndarray], chunk: int = 1, input_hw: Sequence[int] | None = None
) -> list[Any]:
    """The request payloads that carry ``images``, ``chunk`` per request.

    With ``input_hw`` (the deployment's ``info()["input_hw"]``) frames are
    resized to the model input here, exactly as the replica would, so a
    240x320 frame travels as 12 KB instead of 230 KB; a chunk of same-shaped
    frames travels as one stacked [N, H, W, C] array (one buffer to
    serialize). Serialising full frames was the main cost of serving
    (benchmarks/serving_bench.py)."""
    if chunk < 1:
        raise InvalidRequest(f"chunk must be >= 1, got {chunk}", field="chunk")
    sent = [_sendable(img, input_hw) for img in images]
    if chunk == 1:
        return sent
    out: list[Any] = []
    for i in range(0, len(sent), chunk):
        part = sent[i : i + chunk]
        shapes = {im.shape if isinstance(im, np.ndarray) else None for im in part}
        stackable = len(shapes) == 1 and None not in shapes
        if stackable and all(im.dtype == np.uint8 and im.ndim == 3 for im in part):
            out.append(np.stack(part))
        else:
            out.append(list(part))
    return out


def predict(
    handle: Any, images: Sequence[np.ndarray], *, chunk: int = 1, resize: bool = True
) -> list[Prediction]:
    """Classify ``images`` through a deployment handle, ``chunk`` images per
    request (at most the deployment's ``max_batch_size``). Requests from all
    callers share batches and replicas: camera scene inference and cameras
    without an edge device send their frames one by one (``chunk=1``), bulk
    jobs send bigger chunks to save per-request overhead. With ``resize``
    frames are shrunk to the model input before they are sent
    (:func:`requests_for`); predictions are the same."""
    hw = input_hw(handle) if resize else None
    reqs = requests_for(images, chunk, hw)
    responses = [handle.remote(r) for r in reqs]
    if chunk == 1:
        return [r.result() for r in responses]
    return [p for r in responses for p in r.result()]


def prelabel(
    handle: Any,
    images: Sequence[np.ndarray],
    *,
    sample_ids: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Pre-labels for an annotation task: one item per image with ``label``,
    ``score``, ``model_version`` (``algorithm@version``) and ``probs`` (plus
    ``sample_id`` when given), ready for ``Catalog.annotate_many(...,
    source="model")``."""
    if sample_ids is not None and len(sample_ids) != len(images):
        raise InvalidRequest(
            f"{len(sample_ids)} sample ids for {len(images)} images", field="sample_ids"
        )
    info = handle.info.remote().result()
    model_version = f"{info['algorithm']}@{info['version']}"
    out: list[dict[str, Any]] = []
    for i, p in enumerate(predict(handle, images, chunk=int(info["max_batch_size"]))):
        item: dict[str, Any] = {
            "label": p.label,
            "score": p.score,
            "probs": dict(p.probs),
            "model_version": model_version,
        }
        if sample_ids is not None:
            item["sample_id"] = sample_ids[i]
        out.append(item)
    return out

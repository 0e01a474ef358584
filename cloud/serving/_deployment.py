"""Ray Serve deployments of published algorithm versions.

One deployment (and one Serve application) per ``algorithm@version``. A
replica fetches the package from the store (a store folder it can read, or
the store's HTTP artifact URL), checks the archive's sha256 against the index
and the manifest signature against the store's public key, then serves
single-image requests that ``@serve.batch`` groups into model calls.

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
        """The validated images of one request."""
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
            preds = await self._batched(self.core.check(request))
            return preds[0] if isinstance(request, np.ndarray) else preds

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
    return serve.run(build_application(source, config), name=name, route_prefix=route_prefix)


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


def predict(handle: Any, images: Sequence[np.ndarray], *, chunk: int = 1) -> list[Prediction]:
    """Classify ``images`` through a deployment handle, ``chunk`` images per
    request (at most the deployment's ``max_batch_size``). Requests from all
    callers share batches and replicas: camera scene inference and cameras
    without an edge device send their frames one by one (``chunk=1``), bulk
    jobs send bigger chunks to save per-request overhead."""
    if chunk < 1:
        raise InvalidRequest(f"chunk must be >= 1, got {chunk}", field="chunk")
    if chunk == 1:
        responses = [handle.remote(img) for img in images]
        return [r.result() for r in responses]
    parts = [handle.remote(list(images[i : i + chunk])) for i in range(0, len(images), chunk)]
    return [p for r in parts for p in r.result()]


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

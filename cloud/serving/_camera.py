"""Cameras without an edge device: the edge agent, its model on Ray Serve.

A *cloud device* is an ordinary :class:`edge_agent.Agent` (desired state over
MQTT, fetch + verify against the pinned store key, warm-up, golden check,
streams, event rules, hard samples, reported state) whose model loader is
:func:`cloud_model_loader`: instead of loading the package into a local ONNX
Runtime it deploys ``algorithm@version`` on Ray Serve (one deployment per
version, ``@serve.batch`` across every stream and caller) and sends each frame
there. The scheduler places the demands of cameras that no edge device reaches
on such a device like on any other (a graph device with a cloud hardware
target); ``citybrain cameras run --device cloud-1`` runs one.

What the replicas serve is pinned to what the agent verified: the deployment's
:class:`~cloud.serving.PackageSource` carries the assignment's archive sha256
and the agent's pinned store key, so a replica loads that same archive from the
store (sha256 checked) and refuses it unless its manifest is signed by that key.

Golden check: a deployment takes uint8 images only (no raw-tensor path), so the
packaged golden input runs through a local :class:`~cloud.serving.Predictor`
built from the agent's verified copy of the same package (signature and file
hashes checked again), within the manifest's tolerance; then a probe frame goes
through the deployment and through that predictor, and the probabilities must
agree within the same tolerance. Together: the signed model computes the
golden output, and the deployment computes what that model computes.

Frames are resized to the model input before they are sent (as the replica
would; a fraction of the bytes) and each request waits at most ``timeout_s``.
Answers become the agent's results with the edge post-processing
(``top_k``, ``score_threshold``); the runtime is reported as ``ray-serve``.
Only classifiers are served (what :class:`~cloud.serving.Predictor` serves): a
detector assigned to a cloud device fails that apply with a clear reason and
the previous models keep running, as on an edge device.

Ray is imported only inside functions.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from cloud.serving._config import ServingConfig
from cloud.serving._deployment import PackageSource, build_application, deployment_name
from cloud.serving._errors import InvalidRequest, RayUnavailable, ServingError
from cloud.serving._predictor import Predictor
from edge_agent import GoldenCheckFailed, ModelLoadError, RuntimeModel, RuntimeResult
from edge_agent._runtime import postprocess
from edge_agent.protocol import HardwareProfile, Manifest

log = logging.getLogger("cloud.serving.camera")

RUNTIME = "ray-serve"
#: hardware target a cloud device reports by default (its graph device's target)
CLOUD_TARGET = "cloud-ray"


def _short(e: BaseException) -> str:
    """One line of a (possibly remote, multi-line) exception: its last line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


def probe_frame(manifest: Manifest) -> np.ndarray:
    """A fixed uint8 BGR frame of the model's input size (the cross-check input)."""
    h, w = manifest.input.preprocess.resize
    return np.random.default_rng(0).integers(0, 256, (int(h), int(w), 3), dtype=np.uint8)


class ServeModel(RuntimeModel):
    """An ``algorithm@version`` served by a Ray Serve deployment, run by the agent."""

    runtime = RUNTIME

    def __init__(
        self,
        manifest: Manifest,
        sha256: str,
        package_dir: Path,
        *,
        handle: Any,
        public_key: bytes,
        owned: bool = False,
        timeout_s: float = 30.0,
    ) -> None:
        super().__init__(manifest, sha256, package_dir)
        self.handle = handle
        self.public_key = public_key
        #: this process created the Serve application: close() deletes it
        self.owned = owned
        self.timeout_s = timeout_s
        self.app_name = deployment_name(manifest.id, manifest.version)
        self.output_names = ["probabilities"]
        h, w = manifest.input.preprocess.resize
        self._hw = (int(h), int(w))
        # the deployment answers probabilities: post-process them as such
        post = manifest.postprocess.model_copy(update={"output": "probabilities"})
        self._as_probs = manifest.model_copy(update={"postprocess": post})
        self._local: Predictor | None = None  # only during the golden check

    # -- requests ------------------------------------------------------------
    def probabilities(self, frame: np.ndarray) -> np.ndarray:
        """Class probabilities (manifest label order) of one uint8 BGR frame."""
        import cv2

        img = frame
        if isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[:2] != self._hw:
            img = cv2.resize(frame, self._hw[::-1], interpolation=cv2.INTER_LINEAR)
        try:
            pred = self.handle.remote(img).result(timeout_s=self.timeout_s)
        except Exception as e:  # noqa: BLE001 - Ray wraps replica errors in its own types
            raise ServingError(
                f"{self.describe()}: Ray Serve request failed: {_short(e)}", field="frame"
            ) from None
        return np.asarray(
            [pred.probs.get(label, 0.0) for label in self.manifest.labels], dtype=np.float32
        )

    def run(self, frame: np.ndarray) -> RuntimeResult:
        t0 = time.perf_counter()
        probs = self.probabilities(frame)
        ms = (time.perf_counter() - t0) * 1000
        res: RuntimeResult = postprocess([probs[None]], self._as_probs, self.output_names)
        res.inference_ms = ms
        return res

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        """Raw tensor -> raw output through the local verified predictor (the
        golden check's path; a deployment takes images only)."""
        if self._local is None:
            raise ModelLoadError(f"{self.describe()}: raw tensors run only in the golden check")
        return [self._local.run(x)]

    def warm(self, runs: int) -> None:
        frame = np.zeros((*self._hw, 3), dtype=np.uint8)
        for _ in range(runs):
            self.probabilities(frame)

    def golden_check(self) -> float:
        """The golden input through a local predictor verified on the same
        package, then a probe frame through the deployment and that predictor;
        GoldenCheckFailed if either is outside the manifest's tolerance."""
        g = self.manifest.golden
        try:
            self._local = Predictor.from_package_dir(self.package_dir, self.public_key)
        except ServingError as e:
            raise GoldenCheckFailed(f"{self.describe()}: {e.message}") from None
        try:
            diff = super().golden_check()
            probe = probe_frame(self.manifest)
            want = self._local.probabilities([probe])[0]
            try:
                got = self.probabilities(probe)
            except ServingError as e:
                raise GoldenCheckFailed(e.message) from None
        finally:
            self._local = None  # the deployment holds the model; free this copy
        atol = max(g.atol, 1e-5)
        if not np.allclose(got, want, atol=atol, rtol=g.rtol):
            raise GoldenCheckFailed(
                f"{self.describe()}: the deployment's answer differs from the verified package "
                f"(max abs diff {float(np.max(np.abs(got - want))):.3g}, atol {atol}, "
                f"rtol {g.rtol})"
            )
        return diff

    def close(self) -> None:
        if not self.owned:
            return
        self.owned = False
        try:
            from ray import serve

            serve.delete(self.app_name)
        except Exception as e:  # noqa: BLE001 - Ray gone already: nothing left to delete
            log.warning("%s: could not delete Serve application: %s", self.app_name, _short(e))


def deploy_serve_model(
    package_dir: Path,
    manifest: Manifest,
    sha256: str,
    *,
    public_key: bytes,
    store_dir: Path | str | None = None,
    artifact_url: str | None = None,
    config: ServingConfig | None = None,
    timeout_s: float = 30.0,
) -> ServeModel:
    """Deploy the verified package ``package_dir`` (archive ``sha256``) on the
    connected Ray Serve and return it as a runtime model; ModelLoadError (the
    agent's) when it cannot be served."""
    what = f"{manifest.id} {manifest.version}"
    task = str(getattr(manifest.task, "value", manifest.task))
    if task != "classify" or manifest.postprocess.output not in ("logits", "probabilities"):
        raise ModelLoadError(
            f"{what}: task {task!r} ({manifest.postprocess.output} output) cannot run on Ray "
            "Serve: its deployments serve classifiers only; assign it to an edge device"
        )
    source = PackageSource(
        algorithm=manifest.id,
        version=manifest.version,
        sha256=sha256,
        public_key_hex=public_key.hex(),
        store_dir=str(store_dir) if store_dir is not None else None,
        artifact_url=artifact_url,
    )
    try:
        from ray import serve
    except ImportError as e:  # pragma: no cover - ray is in the cloud extra
        raise ModelLoadError(f"{what}: Ray Serve is not installed: {e}") from None
    name = deployment_name(manifest.id, manifest.version)
    try:
        existed = name in serve.status().applications
        # returns once every replica loaded (and verified) the package, or raises
        handle = serve.run(
            build_application(source, config or ServingConfig()), name=name, route_prefix=None
        )
    except Exception as e:  # noqa: BLE001 - Ray raises RuntimeError / its own types
        raise ModelLoadError(f"{what}: Ray Serve could not deploy it: {_short(e)}") from None
    try:
        handle = handle.options(_by_reference=False)  # frames by value, as deploy_version
    except TypeError:  # a Ray without the option
        pass
    return ServeModel(
        manifest,
        sha256,
        Path(package_dir),
        handle=handle,
        public_key=public_key,
        owned=not existed,
        timeout_s=timeout_s,
    )


def cloud_model_loader(
    *,
    public_key: bytes,
    store_dir: Path | str | None = None,
    artifact_url: str | None = None,
    config: ServingConfig | None = None,
    timeout_s: float = 30.0,
) -> Callable[[Path, Manifest, str, HardwareProfile], ServeModel]:
    """The ``model_loader`` of a cloud device's :class:`edge_agent.Agent`.

    Replicas read the archive from ``store_dir`` (a store root they can read)
    or from ``artifact_url`` (the API's ``.../api/v1/store/artifacts``); give
    exactly one. ``public_key`` is the agent's pinned store key. Call it with
    Ray connected and Serve started (:func:`start_serving`)."""
    if (store_dir is None) == (artifact_url is None):
        raise InvalidRequest(
            "give exactly one of store_dir or artifact_url (where replicas read packages)",
            field="store_dir",
        )
    config = config or ServingConfig()
    if config.color_order != "BGR":
        raise InvalidRequest(
            "color_order must be BGR for a cloud device: the agent's streams give BGR frames",
            field="color_order",
        )

    def load(
        package_dir: Path, manifest: Manifest, sha256: str, hardware: HardwareProfile
    ) -> ServeModel:
        return deploy_serve_model(
            package_dir,
            manifest,
            sha256,
            public_key=public_key,
            store_dir=store_dir,
            artifact_url=artifact_url,
            config=config,
            timeout_s=timeout_s,
        )

    return load


# ---------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------


def _check_reachable(address: str) -> None:
    """Fail fast on a Ray address nothing answers at (``ray.init`` would wait minutes)."""
    if address == "auto":
        return
    u = urlparse(address if "://" in address else f"ray://{address}")
    if not u.hostname or not u.port:
        raise RayUnavailable(
            f"Ray address {address!r}: expected host:port, ray://host:port or auto",
            field="ray_address",
        )
    try:
        socket.create_connection((u.hostname, u.port), timeout=3).close()
    except OSError as e:
        raise RayUnavailable(
            f"no Ray at {address} ({e.strerror or e}): start one (ray start --head) or fix "
            "CITYBRAIN_RAY_ADDRESS / RAY_ADDRESS",
            field="ray_address",
        ) from None


def start_serving(address: str | None = None, *, num_cpus: int | None = None) -> str:
    """Connect to Ray (``address``, else ``RAY_ADDRESS``, else a new local Ray
    with ``num_cpus``) and start Serve without its HTTP proxy (handles only).
    Returns the cluster's GCS address; RayUnavailable when Ray cannot be used."""
    try:
        import ray
        from ray import serve
    except ImportError as e:  # pragma: no cover - ray is in the cloud extra
        raise RayUnavailable(f"Ray Serve is not installed: {e}") from None
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        if address:
            _check_reachable(address)
        kw: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
        try:
            if address:
                ray.init(address=address, **kw)
            else:
                ray.init(num_cpus=num_cpus, include_dashboard=False, **kw)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
            raise RayUnavailable(
                f"cannot start or reach Ray ({address or 'a local Ray'}): {_short(e)}",
                field="ray_address",
            ) from None
    try:
        serve.start(proxy_location="Disabled")
    except Exception as e:  # noqa: BLE001 - Serve raises RuntimeError / its own types
        raise RayUnavailable(f"Ray Serve did not start: {_short(e)}") from None
    return str(ray.get_runtime_context().gcs_address)


def cloud_hardware(target: str = CLOUD_TARGET) -> HardwareProfile:
    """The profile a cloud device reports: the connected Ray cluster's resources."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    return HardwareProfile(
        target=target,
        cpu=f"Ray cluster, {nodes} node{'s' if nodes != 1 else ''}",
        cores=int(res.get("CPU", 0)),
        memory_mb=int(res.get("memory", 0)) // (1024 * 1024),
        gpu=f"{gpus} GPU{'s' if gpus != 1 else ''}" if gpus else None,
    )

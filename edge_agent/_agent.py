"""The agent: desired -> reported reconciliation around the session, fetcher,
runtimes, streams, events and the hard-sample outbox.

Apply = prepare every model the desired state needs (fetch, verify, load, warm,
golden check) while the old ones keep running, then switch all streams at once
(attribute swap, no gap), then release what is no longer used. Any failure
leaves everything as it was and is reported in ``last_error`` (and counted in
``update_failures.<reason>``). A newer revision arriving mid-apply cancels it
between steps (and between chunks).

Around that: store announcements of the algorithms in use are prefetched into
the cache (``_prefetch``), the outbox state is part of ``reported`` (re-published
when it changes, at most every ``outbox_report_min_s``), and ``/metrics`` serves
Prometheus metrics when ``metrics_port`` is set (``_metrics``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent import __version__
from edge_agent._cache import ArtifactCache
from edge_agent._config import AgentConfig
from edge_agent._errors import EdgeError, ModelLoadError, Superseded
from edge_agent._events import EventTracker
from edge_agent._fetch import ChunkFetcher, HttpFetcher, PackageFetcher, disk_error
from edge_agent._hard import HardDelivery, HardSampler
from edge_agent._hardware import detect_hardware
from edge_agent._metrics import MetricsServer, agent_metrics
from edge_agent._outbox import Outbox
from edge_agent._prefetch import Prefetcher, reason_of
from edge_agent._runtime import (
    EngineBuilder,
    LoadedModel,
    TrtModel,
    load_model,
    tensorrt_available,
)
from edge_agent._session import Session
from edge_agent._stats import Stats
from edge_agent._streams import StreamWorker
from edge_agent.protocol import (
    Assignment,
    DesiredState,
    HardwareProfile,
    Manifest,
    OutboxState,
    ProtocolError,
    ReportedState,
    Topics,
    decode,
    encode,
)
from edge_agent.protocol import LoadedModel as ReportedModel

log = logging.getLogger("edge_agent.agent")

ModelKey = tuple[str, str, str]  # algorithm, version, archive sha256

#: (verified package dir, its manifest, archive sha256, device hardware) -> a loaded
#: model; the agent warms it and runs its golden check before switching to it
ModelLoader = Callable[[Path, Manifest, str, HardwareProfile], LoadedModel]


@dataclass
class Running:
    model: LoadedModel
    centroids: np.ndarray | None


def schedule_active(a: Assignment, now: datetime | None = None) -> bool:
    now = now or datetime.now().astimezone()
    s = a.schedule
    return (not s.hours or now.hour in s.hours) and (not s.days or now.weekday() in s.days)


class Agent:
    """One device agent. ``start()`` connects and runs until ``stop()``.

    ``model_loader`` replaces the local runtimes (ONNX Runtime / TensorRT,
    :func:`edge_agent._runtime.load_model`): it gets a verified package and
    returns a :class:`~edge_agent._runtime.LoadedModel` (exported as
    ``edge_agent.RuntimeModel``), e.g. one that runs the model on a cloud
    serving system. Everything else (desired state, fetch + verify, warm-up,
    golden check, streams, events, hard samples) stays the same."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        hardware: HardwareProfile | None = None,
        model_loader: ModelLoader | None = None,
    ) -> None:
        self.cfg = cfg
        self.load_model: ModelLoader = model_loader or functools.partial(
            load_model, prefer_gpu=cfg.prefer_gpu, threads=cfg.ort_threads
        )
        self.device = cfg.device_id
        self.stats = Stats()
        self.hardware = hardware or detect_hardware()
        self.public_key = cfg.load_store_key()
        self.data_dir = Path(cfg.data_dir)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise disk_error(e, f"data_dir {self.data_dir}") from None
        self.cache = ArtifactCache(self.data_dir / "cache", cfg.cache_max_bytes)
        self.session = Session(
            cfg, agent_version=__version__, hardware=self.hardware, stats=self.stats
        )
        if cfg.fetch_mode == "http":
            if not cfg.http_base_url:
                from edge_agent._errors import ConfigError

                raise ConfigError("http_base_url: required when fetch_mode is 'http'")
            transport: Any = HttpFetcher(
                cfg.http_base_url, self.stats, timeout_s=cfg.chunk_timeout_s
            )
        else:
            transport = ChunkFetcher(
                self.session,
                self.stats,
                chunk_size=cfg.chunk_size,
                window=cfg.chunk_window,
                timeout_s=cfg.chunk_timeout_s,
                retries=cfg.chunk_retries,
            )
        self.fetcher = PackageFetcher(
            self.data_dir, self.cache, transport, self.public_key, self.stats
        )
        self.outbox = Outbox(
            self.data_dir / "outbox.sqlite", max_rows=cfg.hard.outbox_max_rows, stats=self.stats
        )
        self.hard = HardSampler(cfg.hard, self.device, self.outbox, self.stats)
        self.delivery = HardDelivery(cfg.hard, self.device, self.outbox, self.session, self.stats)

        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.pending: DesiredState | None = None
        self.inflight: DesiredState | None = None
        self.current: DesiredState | None = None  # last applied
        self.failed: DesiredState | None = None
        self.applied_revision = -1
        self.last_error: str | None = None
        self.models: dict[ModelKey, Running] = {}
        self.streams: dict[str, StreamWorker] = {}
        self.stream_model: dict[str, ModelKey] = {}
        self.trackers: dict[str, EventTracker] = {}
        self.builds: dict[ModelKey, EngineBuilder] = {}
        self.progress: dict[str, float] = {}
        self._active_set: frozenset[str] = frozenset()
        self._threads: list[threading.Thread] = []
        self._report_now = threading.Event()
        self._last_report = 0.0  # monotonic
        self._reported_outbox: tuple[int, int] | None = None  # (depth, dropped) last published
        self.metrics: MetricsServer | None = None
        self.prefetcher = Prefetcher(
            session=self.session,
            fetcher=self.fetcher,
            public_key=self.public_key,
            stats=self.stats,
            state_dir=self.data_dir / "announcements",
            channel=cfg.follow_channel,
            enabled=cfg.prefetch,
            retry_s=cfg.retry_failed_s,
            on_reject=self.reject,
            progress=self.progress,
        )

        self.session.subscribe(Topics.desired(self.device), self._on_desired)
        # a hard sample leaves the outbox when the cloud's receipt names it
        self.session.subscribe(
            Topics.hard_receipt(self.device), lambda m: self.delivery.on_receipt(m.payload)
        )
        self.session.on_connected(self._on_connected)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> Agent:
        """Start the threads and connect. Raises ConfigError if ``metrics_port`` is taken."""
        if self.cfg.metrics_port:
            try:
                self.metrics = MetricsServer(
                    self.cfg.metrics_host, self.cfg.metrics_port, lambda: agent_metrics(self)
                ).start()
            except OSError as e:
                from edge_agent._errors import ConfigError

                raise ConfigError(
                    f"metrics_port: cannot serve /metrics on "
                    f"{self.cfg.metrics_host}:{self.cfg.metrics_port}: {e.strerror or e}"
                ) from None
        self.prefetcher.start()
        for target, name in (
            (self._reconcile_loop, "reconcile"),
            (self._report_loop, "report"),
            (self._outbox_loop, "outbox"),
        ):
            t = threading.Thread(target=target, name=f"{name}-{self.device}", daemon=True)
            t.start()
            self._threads.append(t)
        self.session.start()
        return self

    def stop(self, *, graceful: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        self._report_now.set()
        self.outbox.wake.set()
        for t in self._threads:
            t.join(10)
        self.prefetcher.stop()
        with self._lock:
            for w in self.streams.values():
                w.stop()
        if graceful:
            with contextlib.suppress(Exception):
                self.publish_reported()
        self.session.stop(graceful=graceful)
        if self.metrics is not None:
            self.metrics.stop()
        self.outbox.close()

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    # -- inbound -----------------------------------------------------------
    def _on_connected(self) -> None:
        # paho resends its own unacknowledged publishes; the outbox offers the rest
        self.delivery.on_connected()
        self._report_now.set()

    def reject(self, what: str, err: Exception) -> None:
        self.stats.inc("rejected")
        log.error("%s: rejected %s: %s", self.device, what, err)
        with self._lock:
            self.last_error = f"rejected {what}: {err}"
        self._report_now.set()

    def _on_desired(self, msg: Any) -> None:
        if not msg.payload:  # retained message cleared
            return
        try:
            d = decode(msg.payload, DesiredState)
        except ProtocolError as e:
            self.reject("desired state", e)
            return
        if d.device != self.device:
            self.reject("desired state", ValueError(f"addressed to device {d.device!r}"))
            return
        streams = [a.stream for a in d.assignments]
        twice = sorted({s for s in streams if streams.count(s) > 1})
        if twice:
            self.reject("desired state", ValueError(f"streams assigned more than once: {twice}"))
            return
        self.offer(d)

    def offer(self, d: DesiredState) -> bool:
        """Queue ``d`` unless it is not newer than what is applied, in flight or queued."""
        with self._lock:
            newest = max(
                self.applied_revision,
                self.inflight.revision if self.inflight else -1,
                self.pending.revision if self.pending else -1,
                self.failed.revision if self.failed else -1,
            )
            if d.revision <= newest:
                self.stats.inc("desired_ignored")
                log.info(
                    "%s: desired revision %d ignored (have %d)", self.device, d.revision, newest
                )
                return False
            self.pending = d
            self.stats.inc("desired_accepted")
        self._wake.set()
        return True

    def _superseded(self) -> bool:
        with self._lock:
            return self._stop.is_set() or (
                self.pending is not None
                and self.inflight is not None
                and self.pending.revision > self.inflight.revision
            )

    # -- reconcile ---------------------------------------------------------
    def _reconcile_loop(self) -> None:
        retry_at: float | None = None
        backoff = self.cfg.retry_failed_s
        while not self._stop.is_set():
            timeout = 30.0 if retry_at is None else max(0.0, retry_at - time.monotonic())
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                d = self.pending
                self.pending = None
                if d is None and retry_at is not None and time.monotonic() >= retry_at:
                    d, self.failed = self.failed, None
                if d is None and self.current is not None:
                    # schedules: re-apply when the set of active assignments changed
                    active = frozenset(
                        a.stream for a in self.current.assignments if schedule_active(a)
                    )
                    if active != self._active_set:
                        d = self.current
                if d is None:
                    continue
                self.inflight = d
            try:
                self._apply(d)
            except Superseded as e:
                log.info("%s: revision %d superseded: %s", self.device, d.revision, e)
                self.stats.inc("applies_superseded")
                with self._lock:
                    self.inflight = None
                continue
            except (EdgeError, ProtocolError, OSError) as e:
                err = disk_error(e, "apply") if isinstance(e, OSError) else e
                log.error("%s: revision %d failed: %s", self.device, d.revision, err)
                self.stats.inc("applies_failed")
                self.stats.inc(f"update_failures.{reason_of(err)}")
                with self._lock:
                    self.inflight = None
                    self.failed = d
                    self.last_error = f"revision {d.revision}: {err}"
                retry_at = time.monotonic() + backoff
                backoff = min(backoff * 2, 600.0)
            except Exception as e:  # noqa: BLE001 - never let the loop die
                log.exception("%s: revision %d crashed the apply", self.device, d.revision)
                self.stats.inc("applies_failed")
                self.stats.inc("update_failures.internal")
                with self._lock:
                    self.inflight = None
                    self.failed = d
                    self.last_error = f"revision {d.revision}: internal error: {e!r}"
                retry_at = time.monotonic() + backoff
                backoff = min(backoff * 2, 600.0)
            else:
                with self._lock:
                    self.inflight = None
                    self.current = d
                    self.failed = None
                    self.applied_revision = d.revision
                    self.last_error = None
                retry_at, backoff = None, self.cfg.retry_failed_s
                self.stats.inc("applies_ok")
                self.prefetcher.follow({a.algorithm for a in d.assignments})
                # partial downloads of artifacts nothing wants any more are dead weight
                with contextlib.suppress(OSError):
                    self.fetcher.clean_staging(
                        {a.artifact.sha256 for a in d.assignments} | self.prefetcher.pending()
                    )
            self.publish_reported()

    def _prepare(self, key: ModelKey, a: Assignment) -> Running:
        algorithm, version, sha = key

        def progress(done: int, total: int) -> None:
            self.progress[f"{algorithm} {version} download"] = round(done / total, 4)

        try:
            path, manifest = self.fetcher.get(
                a.artifact,
                algorithm=algorithm,
                version=version,
                cancel=self._superseded,
                progress=progress,
            )
        finally:
            self.progress.pop(f"{algorithm} {version} download", None)
        if self._superseded():
            raise Superseded("newer revision before load")
        model = self.load_model(path, manifest, sha, self.hardware)
        try:
            try:
                model.warm(self.cfg.warmup_runs)
            except Exception as e:  # noqa: BLE001 - any runtime failure
                raise ModelLoadError(f"{model.describe()}: warm-up failed: {e}") from None
            model.golden_check()
        except Exception:
            model.close()
            raise
        centroids = None
        if manifest.embedding_summary:
            with contextlib.suppress(OSError, ValueError):
                centroids = np.load(path / manifest.embedding_summary, allow_pickle=False)
        return Running(model, centroids)

    def _apply(self, d: DesiredState) -> None:
        active = [a for a in d.assignments if schedule_active(a)]
        if self.cfg.source_override:
            active = [a.model_copy(update={"source": self.cfg.source_override}) for a in active]
        wanted: dict[str, tuple[ModelKey, Assignment]] = {
            a.stream: ((a.algorithm, a.version, a.artifact.sha256), a) for a in active
        }
        prepared: dict[ModelKey, Running] = {}
        pinned: list[str] = []
        try:
            for key, a in wanted.values():
                if key in self.models or key in prepared:
                    continue
                if self._superseded():
                    raise Superseded("newer revision before fetch")
                self.cache.pin(key[2])
                pinned.append(key[2])
                try:
                    prepared[key] = self._prepare(key, a)
                except Superseded:
                    raise
                except (EdgeError, ProtocolError) as e:
                    if isinstance(e, ModelLoadError):
                        # verified bytes, but a model that cannot run here: do not keep it
                        self.cache.unpin(key[2])
                        pinned.remove(key[2])
                        with contextlib.suppress(EdgeError):
                            self.cache.remove(key[2])
                    what = f"{a.algorithm} {a.version}"
                    msg = str(e) if str(e).startswith(what) else f"{what}: {e}"
                    raise type(e)(f"stream {a.stream}: {msg}") from None
            if self._superseded():
                raise Superseded("newer revision before switch")
        except BaseException:
            for r in prepared.values():
                r.model.close()
            for sha in pinned:
                self.cache.unpin(sha)
            raise
        self._switch(wanted, prepared)
        self._active_set = frozenset(wanted)

    def _switch(
        self, wanted: dict[str, tuple[ModelKey, Assignment]], prepared: dict[ModelKey, Running]
    ) -> None:
        with self._lock:
            self.models.update(prepared)
            for stream, (key, a) in wanted.items():
                run = self.models[key]
                worker = self.streams.get(stream)
                loop = bool(a.params.get("loop", True))
                if worker is not None and (worker.source, worker.fps, worker.loop) == (
                    a.source,
                    a.fps,
                    loop,
                ):
                    if self.stream_model.get(stream) != key:
                        worker.swap(run.model, shadow_frames=int(a.params.get("shadow_frames", 0)))
                        self.stats.inc("hot_swaps")
                else:
                    if worker is not None:
                        worker.stop()
                    self.streams[stream] = StreamWorker(
                        stream,
                        a.source,
                        run.model,
                        fps=a.fps,
                        loop=loop,
                        retry_max_s=self.cfg.source_retry_max_s,
                        on_result=self._on_result,
                    ).start()
                if self.stream_model.get(stream) != key or stream not in self.trackers:
                    m = run.model.manifest
                    self.trackers[stream] = EventTracker(
                        m.event_rules,
                        device=self.device,
                        stream=stream,
                        algorithm=m.id,
                        model_version=m.version,
                    )
                self.stream_model[stream] = key
            for stream in [s for s in self.streams if s not in wanted]:
                self.streams.pop(stream).stop()
                self.stream_model.pop(stream, None)
                self.trackers.pop(stream, None)
            in_use = set(self.stream_model.values())
            for key in [k for k in self.models if k not in in_use]:
                run = self.models.pop(key)
                self.cache.unpin(key[2])
                run.model.close()
        self._maybe_build_engines()

    # -- TensorRT engines built in the background --------------------------
    def _maybe_build_engines(self) -> None:
        if not (self.cfg.tensorrt_build and self.cfg.prefer_gpu and self.hardware.gpu_arch):
            return
        why = tensorrt_available()
        for key, run in list(self.models.items()):
            if isinstance(run.model, TrtModel) or key in self.builds:
                continue
            if why is not None:
                self.stats.inc("tensorrt_skipped")
                log.info("%s: no TensorRT engine build for %s: %s", self.device, key[0], why)
                continue
            out = (
                self.data_dir
                / "engines"
                / f"{key[2]}-{self.hardware.gpu_arch}-{self.hardware.tensorrt}.engine"
            )
            self.builds[key] = EngineBuilder(run.model.manifest, run.model.package_dir, out).start()
            threading.Thread(target=self._finish_build, args=(key,), daemon=True).start()

    def _finish_build(self, key: ModelKey) -> None:
        b = self.builds[key]
        while b.thread.is_alive() and not self._stop.is_set():
            self.progress[f"{key[0]} {key[1]} tensorrt build"] = b.progress
            time.sleep(1.0)
        self.progress.pop(f"{key[0]} {key[1]} tensorrt build", None)
        if b.state != "done":
            with self._lock:
                self.last_error = f"TensorRT build for {key[0]} {key[1]} failed: {b.error}"
            return
        with self._lock:
            old = self.models.get(key)
        if old is None:
            return
        try:
            trt_model = TrtModel(old.model.manifest, key[2], old.model.package_dir, b.out)
            trt_model.warm(self.cfg.warmup_runs)
            trt_model.golden_check()
        except Exception as e:  # noqa: BLE001 - keep ONNX Runtime on any failure
            with self._lock:
                self.last_error = f"TensorRT engine for {key[0]} {key[1]} rejected: {e}"
            return
        with self._lock:
            if key not in self.models:
                trt_model.close()
                return
            self.models[key] = Running(trt_model, old.centroids)
            for stream, k in self.stream_model.items():
                if k == key:
                    self.streams[stream].swap(trt_model)
        self._report_now.set()

    # -- results -----------------------------------------------------------
    def _on_result(
        self, worker: StreamWorker, frame: np.ndarray, model: Any, res: Any, shadow: Any
    ) -> None:
        tracker = self.trackers.get(worker.stream)
        if (
            tracker is not None
            and tracker.rules
            and tracker.model_version == model.manifest.version
        ):
            for ev in tracker.update(res.detections):
                self.session.publish(Topics.events(self.device), encode(ev), qos=1)
                self.stats.inc("events")
        run = self.models.get(model.key)
        try:
            self.hard.consider(
                stream=worker.stream,
                frame=frame,
                manifest=model.manifest,
                result=res,
                shadow=shadow,
                centroids=run.centroids if run else None,
            )
        except Exception as e:  # noqa: BLE001 - a full disk must not stop inference
            self.stats.inc("hard_errors")
            with self._lock:
                self.last_error = f"hard sample not stored: {e}"

    # -- outbox ------------------------------------------------------------
    def _outbox_loop(self) -> None:
        while not self._stop.is_set():
            self.outbox.wake.wait(1.0)
            self.outbox.wake.clear()
            if self._stop.is_set():
                return
            try:
                self.delivery.pump()
                self._maybe_report_outbox()
            except Exception as e:  # noqa: BLE001 - e.g. a full disk; retried next round
                self.stats.inc("hard_errors")
                log.error("outbox: %s", e)

    def outbox_snapshot(self) -> dict[str, Any]:
        """Rows per state, depth, dropped (size cap) and the oldest row's age."""
        states, oldest = self.outbox.summary()
        age = None if oldest is None else round(max(0.0, time.time() - oldest), 3)
        return {
            "states": states,
            "depth": sum(states.values()),
            "dropped": self.stats.get("outbox_dropped"),
            "oldest_age_s": age,
        }

    def _maybe_report_outbox(self) -> None:
        """Re-publish ``reported`` when the outbox changed, at most every
        ``outbox_report_min_s`` (a depth that changes with every sample would
        otherwise flood the retained topic)."""
        states, _ = self.outbox.summary()
        now = (sum(states.values()), self.stats.get("outbox_dropped"))
        if now != self._reported_outbox and (
            time.monotonic() - self._last_report >= self.cfg.outbox_report_min_s
        ):
            self._report_now.set()

    # -- reporting ---------------------------------------------------------
    def reported(self) -> ReportedState:
        ob = self.outbox_snapshot()
        outbox = OutboxState(
            depth=ob["depth"], dropped=ob["dropped"], oldest_age_s=ob["oldest_age_s"]
        )
        with self._lock:
            error = self.last_error
            cur = self.current
            if error is None and cur is not None and cur.expires_at is not None:
                expires = cur.expires_at
                if expires.tzinfo is None:
                    expires = expires.replace(tzinfo=UTC)
                if datetime.now(UTC) > expires:
                    # keep running the last good models, but say the orders are old
                    error = (
                        f"stale: desired revision {cur.revision} expired at "
                        f"{cur.expires_at.isoformat()}"
                    )
            return ReportedState(
                device=self.device,
                applied_revision=self.applied_revision,
                models=[
                    ReportedModel(
                        algorithm=k[0], version=k[1], runtime=r.model.runtime, sha256=k[2]
                    )
                    for k, r in self.models.items()
                ],
                streams=[w.health() for w in self.streams.values()],
                last_error=error,
                rejected=self.stats.get("rejected"),
                progress=dict(self.progress),
                outbox=outbox,
            )

    def publish_reported(self) -> None:
        r = self.reported()
        self.session.publish(Topics.reported(self.device), encode(r), qos=1, retain=True)
        self._last_report = time.monotonic()
        if r.outbox is not None:
            self._reported_outbox = (r.outbox.depth, r.outbox.dropped)
        self.stats.inc("reports")

    def _report_loop(self) -> None:
        while not self._stop.is_set():
            self._report_now.wait(self.cfg.report_interval_s)
            self._report_now.clear()
            if self._stop.is_set():
                return
            if self.session.connected.is_set():
                try:
                    self.publish_reported()
                except Exception:  # noqa: BLE001
                    log.exception("report failed")

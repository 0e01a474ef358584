"""The re-planning service: closes the loop from the knowledge graph to the devices.

It listens (MQTT v5) to ``cb/v1/dev/+/status`` (device availability),
``cb/v1/store/announce/+`` (a version moved on a channel) and ``cb/v1/dev/+/reported``
(fed to the store's rollouts: ``observe`` + ``reconcile``), polls the stored graph's
revision (graph and policies are saved together) every ``poll_s`` and watches the next
time-window edge of the policies. Triggers go through a :class:`Debouncer`. A re-plan:

1. loads the graph, exports the instance (minus unavailable devices) and the pins and
   exclusions of the policies active now;
2. ``solve(previous=last plan, churn_weight)`` — never publishes a plan failing
   :func:`check_plan` (``solve`` refuses to return one; checked again here);
3. builds desired states (:func:`build_desired`), saves them with the plan atomically
   (``state_path``), then publishes retained QoS 1 ``dev/{d}/desired`` for the devices
   whose state changed only.

A version change (announcement, rollout step) only rebuilds the desired states from
the last plan. On start the saved desired states are republished as they were (same
revision and content: a device that applied them ignores them), so a crash between
saving and publishing loses nothing.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from edge_agent.protocol import (
    PREFIX,
    Announcement,
    DeviceStatus,
    ProtocolError,
    ReportedState,
    Topics,
    decode,
    encode,
)

from ._check import check_plan
from ._desired import build_desired
from ._errors import SchedulerError
from ._models import parse_instance
from ._replan import (
    Batch,
    Debouncer,
    PlannerState,
    active_set,
    load_state,
    next_window_edge,
    save_state,
)
from ._solve import solve

log = logging.getLogger(__name__)


@dataclass
class ReplanRecord:
    """One re-plan (or desired-state refresh) the service ran."""

    reasons: list[str]
    resolved: bool
    devices: list[str]  # available devices it planned with
    published: dict[str, int]  # device -> revision published
    objective: float | None = None
    error: str | None = None
    skipped: list[str] = field(default_factory=list)


class ReplanService:
    """Runs in its own thread (:meth:`start` / :meth:`stop`); see the module docstring."""

    def __init__(
        self,
        *,
        engine: Any,
        store: Any,
        mqtt_url: str,
        state_path: Path,
        channel: str = "stable",
        churn_weight: float = 1.0,
        time_limit: float = 5.0,
        solver: str = "auto",
        window_s: float = 2.0,
        max_delay_s: float = 10.0,
        offline_grace_s: float = 30.0,
        device_min_interval_s: float = 10.0,
        poll_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = datetime.now,
        client_id: str | None = None,
        sync_algorithms: bool = True,
    ) -> None:
        self.engine = engine
        self.store = store
        self.mqtt_url = mqtt_url
        self.state_path = Path(state_path)
        self.channel = channel
        self.churn_weight = churn_weight
        self.time_limit = time_limit
        self.solver = solver
        self.poll_s = poll_s
        self.clock = clock
        self.wall_clock = wall_clock
        self.client_id = client_id or f"cb-replan-{uuid.uuid4().hex[:8]}"
        #: enter announced algorithms into the graph from their store manifests
        self.sync_algorithms = sync_algorithms
        self._to_sync: set[str] = set()
        self.debouncer = Debouncer(
            window_s=window_s,
            max_delay_s=max_delay_s,
            offline_grace_s=offline_grace_s,
            device_min_interval_s=device_min_interval_s,
            clock=clock,
        )
        self.state: PlannerState = load_state(self.state_path)
        self.history: list[ReplanRecord] = []
        #: messages received / refused (bad schema or payload)
        self.received = 0
        self.rejected = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._connected = threading.Event()
        self._graph_devices: set[str] = set()
        self._graph_algorithms: set[str] = set()
        self._graph_revision: int | None = None
        self._next_poll = 0.0
        self._next_edge: datetime | None = None
        self._reports: list[ReportedState] = []
        self._ever_connected = False
        self._republish = False

    # -- lifecycle ---------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> ReplanService:
        import paho.mqtt.client as mqtt

        self._refresh_graph_index()
        u = urlparse(self.mqtt_url)
        if u.scheme not in ("mqtt", "mqtts", "tcp") or not u.hostname:
            raise SchedulerError(f"broker URL {self.mqtt_url!r}: expected mqtt://host:port")
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        if u.username:
            client.username_pw_set(u.username, u.password)
        if u.scheme == "mqtts":
            client.tls_set()
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *a, **k: self._connected.clear()
        client.on_message = self._on_message
        try:
            client.connect(u.hostname, u.port or (8883 if u.scheme == "mqtts" else 1883), 30)
        except OSError as e:
            raise SchedulerError(f"cannot reach the broker at {self.mqtt_url}: {e}") from None
        self._client = client
        client.loop_start()
        if not self._connected.wait(timeout):
            client.loop_stop()
            raise SchedulerError(f"the broker at {self.mqtt_url} did not accept the connection")
        self._republish_saved()
        with self._lock:
            if self.state.plan is not None:
                self.debouncer.assume_available({a.device for a in self.state.plan.assignments})
            self.debouncer.trigger("startup")
        self._thread = threading.Thread(target=self._run, name="replan", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()

    def __enter__(self) -> ReplanService:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- MQTT --------------------------------------------------------------------

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        if getattr(rc, "is_failure", False):
            log.error("broker refused the connection: %s", rc)
            return
        # QoS 0 on purpose: these are retained state topics, and a city's worth of retained
        # messages delivered on subscribe at QoS 1 overflows the broker's per-client queue
        # (mosquitto's max_queued_messages, 1000), which then drops newer messages too
        client.subscribe(
            [(Topics.ALL_STATUS, 0), (Topics.ALL_ANNOUNCE, 0), (Topics.ALL_REPORTED, 0)]
        )
        if self._ever_connected:  # a reconnect: what was published meanwhile may be lost
            self._republish = True
            self._wake.set()
        self._ever_connected = True
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.received += 1
        try:
            self.handle(msg.topic, msg.payload)
        except Exception as e:  # never kill the network thread
            self.rejected += 1
            log.error("message on %s rejected: %s", msg.topic, e)

    def handle(self, topic: str, payload: bytes) -> None:
        """Dispatch one message (public for tests and for other transports)."""
        if not payload:
            return  # a cleared retained message
        if topic.endswith("/status") and topic.startswith(PREFIX + "dev/"):
            st = decode(payload, DeviceStatus)
            if Topics.device_of(topic) != st.device:
                raise ProtocolError(f"status of {st.device} on {topic}")
            if st.device not in self._graph_devices:
                return  # not ours: another graph's device
            with self._lock:
                self.debouncer.device_status(st.device, st.state == "online")
        elif topic.startswith(Topics.ALL_ANNOUNCE[:-1]):
            alg = topic.rsplit("/", 1)[-1]
            ann = decode(payload, Announcement)
            with self._lock:
                if alg in self._graph_algorithms:
                    self.debouncer.trigger(f"announcement of {alg}", resolve=False)
                if self.sync_algorithms and self.channel in ann.channels:
                    self._to_sync.add(alg)  # the graph is written on the service thread
        elif topic.endswith("/reported"):
            rep = decode(payload, ReportedState)
            if rep.device not in self._graph_devices:
                return
            with self._lock:  # the store's writes happen on the service thread
                self._reports.append(rep)
        else:
            return
        self._wake.set()

    def _on_reported(self, rep: ReportedState) -> None:
        from algorithm_store import DeviceReport

        algos = {m.algorithm for m in rep.models} & self._graph_algorithms
        reports = [
            r for r in (DeviceReport.from_reported(rep, a) for a in sorted(algos)) if r is not None
        ]
        if not reports:
            return
        before = self._rollouts_sig()
        self.store.observe(reports)  # records and reconciles the rollouts
        self.store.reconcile()
        if self._rollouts_sig() != before:
            with self._lock:
                self.debouncer.trigger(f"rollout progress after {rep.device}", resolve=False)

    def _rollouts_sig(self) -> Any:
        return [(r.id, r.state, r.current_group) for r in self.store.rollouts()]

    # -- loop --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as e:  # keep serving; the error is in the history
                log.exception("re-planning failed")
                self.history.append(ReplanRecord(["loop"], False, [], {}, error=str(e)))
            with self._lock:
                wake = self.debouncer.next_wakeup()
            now = self.clock()
            waits = [self._next_poll - now, 1.0]
            if wake is not None:
                waits.append(wake - now)
            self._wake.wait(max(0.01, min(waits)))
            self._wake.clear()

    def _tick(self) -> None:
        if self._republish:
            self._republish = False
            self._republish_saved()
        with self._lock:
            reports, self._reports = self._reports, []
            to_sync, self._to_sync = self._to_sync, set()
        for rep in reports:
            self._on_reported(rep)
        if to_sync:
            self._sync_algorithms(to_sync)
        now = self.clock()
        if now >= self._next_poll:
            self._next_poll = now + self.poll_s
            self._poll_graph()
        if self._next_edge is not None and self.wall_clock() >= self._next_edge:
            edge, self._next_edge = self._next_edge, None
            with self._lock:
                self.debouncer.trigger(f"time window edge at {edge.isoformat()}")
        with self._lock:
            batch = self.debouncer.take()
            available = self.debouncer.available()
        if batch is not None:
            self.run_batch(batch, available)

    def _poll_graph(self) -> None:
        import knowledge_graph as kg

        rev = kg.stored_revision(self.engine)
        if rev != self._graph_revision:
            first = self._graph_revision is None
            self._graph_revision = rev
            if not first:
                with self._lock:
                    self.debouncer.trigger(f"graph/policies revision {rev}")

    def _sync_algorithms(self, algorithms: set[str]) -> None:
        """Algorithms enter (or are updated in) the graph from the store manifest of the
        version on ``channel``. A new algorithm, or a version whose scenes, detected
        events, fps or cost profiles differ, saves the graph and re-solves; any other
        version change saves the graph (its version) and leaves placement alone: the
        announcement already rebuilt the desired states."""
        import knowledge_graph as kg

        graph = kg.load(self.engine)
        entered: list[str] = []
        resolve = False
        for alg in sorted(algorithms):
            known = graph.has(kg.NodeType.ALGORITHM, alg)
            try:
                version = self.store.channels(alg).get(self.channel)
                manifest = self.store.version(alg, version).manifest if version else None
            except Exception as e:  # noqa: BLE001 - a bad store entry must not stop the loop
                log.error("announced %s: cannot read its manifest from the store: %s", alg, e)
                continue
            if manifest is None or (
                known and graph.node(kg.NodeType.ALGORITHM, alg).get("version") == manifest.version
            ):
                continue
            before = self._placement_sig(graph, alg) if known else None
            try:
                graph.add_algorithm_from_manifest(manifest)
            except kg.GraphError as e:
                log.error("announced %s %s not entered into the graph: %s", alg, version, e)
                continue
            entered.append(f"{alg} {manifest.version}")
            resolve = resolve or before != self._placement_sig(graph, alg)
        if not entered:
            return
        try:
            rev = kg.save(graph, self.engine)
        except kg.StaleGraph:  # someone saved meanwhile: try again on the next tick
            with self._lock:
                self._to_sync |= algorithms
            return
        log.info("algorithms entered from the store: %s", ", ".join(entered))
        self._refresh_graph_index(graph)  # the graph just saved: no second load
        self._graph_revision = rev  # our own change: the poll must not re-solve for it
        if resolve:
            with self._lock:
                self.debouncer.trigger("store: " + ", ".join(entered))

    @staticmethod
    def _placement_sig(graph: Any, alg: str) -> Any:
        import knowledge_graph as kg

        return (
            sorted(graph.algorithm_scenes(alg)),
            sorted(graph.algorithm_detects(alg)),
            graph.node(kg.NodeType.ALGORITHM, alg).get("fps"),
            graph.algorithm_cost(alg),
        )

    def _refresh_graph_index(self, graph: Any = None) -> Any:
        """Index the devices and algorithms of ``graph`` (default: the stored one)."""
        import knowledge_graph as kg

        if graph is None:
            graph = kg.load(self.engine)
        self._graph_devices = set(graph.nodes(kg.NodeType.DEVICE))
        self._graph_algorithms = set(graph.nodes(kg.NodeType.ALGORITHM))
        if self._graph_revision is None:
            self._graph_revision = graph.revision
        return graph

    # -- one re-plan -------------------------------------------------------------

    def run_batch(self, batch: Batch, available: set[str]) -> ReplanRecord:
        """Re-plan (or refresh desired states) now and publish what changed."""
        import knowledge_graph as kg

        graph = self._refresh_graph_index()
        at = self.wall_clock()
        self._next_edge = next_window_edge(active_set(graph.policies.values()), at)
        sources = {
            c: str(graph.node(kg.NodeType.CAMERA, c).get("source") or "")
            for c in graph.nodes(kg.NodeType.CAMERA)
        }
        fps = {
            a: float(graph.node(kg.NodeType.ALGORITHM, a)["fps"])
            for a in graph.nodes(kg.NodeType.ALGORITHM)
        }
        usable = sorted(available & self._graph_devices)
        rec = ReplanRecord(batch.reasons, batch.resolve or self.state.plan is None, usable, {})
        plan = self.state.plan
        try:
            if rec.resolved:
                doc = kg.export_instance(graph, at=at)
                doc["devices"] = [d for d in doc["devices"] if d["id"] in available]
                ext = kg.export_extensions(graph, at=at)
                inst = parse_instance(doc, "live graph")
                plan = solve(
                    inst,
                    solver=self.solver,
                    time_limit=self.time_limit,
                    previous=self.state.plan,
                    churn_weight=self.churn_weight,
                    extensions=ext,
                )
                bad = check_plan(inst, plan, ext)
                if bad:  # solve() already refuses; never publish such a plan
                    raise SchedulerError(f"plan fails the checker: {bad[0]}")
                rec.objective = plan.objective
            assert plan is not None
            built = build_desired(
                plan,
                self.store,
                channel=self.channel,
                sources=sources,
                fps=fps,
                previous=self.state.desired,
                devices=self._graph_devices,
            )
        except Exception as e:
            rec.error = str(e)
            log.error("re-plan (%s) failed, nothing published: %s", "; ".join(batch.reasons), e)
            self.history.append(rec)
            return rec
        rec.skipped = built.skipped
        for why in built.skipped:
            log.warning("left out of the desired states: %s", why)
        new_state = PlannerState(plan=plan, desired=built.states, graph_revision=graph.revision)
        save_state(self.state_path, new_state)  # first: revisions survive a crash
        self.state = new_state
        for d in built.changed:
            self._publish(built.states[d])
            rec.published[d] = built.states[d].revision
        self.history.append(rec)
        log.info(
            "re-plan (%s): %d devices usable, %d desired states published",
            "; ".join(batch.reasons),
            len(usable),
            len(rec.published),
        )
        return rec

    def _publish(self, state: Any) -> None:
        info = self._client.publish(Topics.desired(state.device), encode(state), qos=1, retain=True)
        try:
            info.wait_for_publish(10)
        except (RuntimeError, ValueError) as e:  # not queued at all (disconnected)
            log.error("desired state of %s not published: %s", state.device, e)
            return
        if not info.is_published():
            # paho keeps it queued and sends it on reconnect; the reconnect republishes
            # every saved state anyway
            log.warning("desired state of %s not acknowledged yet", state.device)

    def _republish_saved(self) -> None:
        for st in self.state.desired.values():
            self._publish(st)

    # -- introspection -------------------------------------------------------------

    @property
    def replans(self) -> int:
        """Solves run so far (refreshes of desired states not counted)."""
        return sum(1 for r in self.history if r.resolved and r.error is None)

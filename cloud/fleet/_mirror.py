"""The fleet mirror: device status / reported / events (+ hard-sample receipts)
from MQTT v5 into Redis, with change notices on the live-events channel."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, Field

from cloud.core.config import Settings
from cloud.fleet._state import TOPICS, Batch, Rejected, parse, rate_per_min
from cloud.fleet._store import FleetStore, notice_json

log = logging.getLogger("citybrain.fleet")


class MirrorConfig(BaseModel):
    """How the mirror connects and batches (options of ``citybrain fleet watch``)."""

    broker_url: str = Field(description="mqtt://[user:pass@]host:port (mqtts:// for TLS)")
    client_id: str = Field(default="citybrain-fleet-1", min_length=1, max_length=128)
    keepalive_s: int = Field(default=30, ge=5)
    batch_ms: int = Field(default=200, ge=1, le=60_000, description="longest wait to fill a batch")
    max_batch: int = Field(default=5000, ge=1)
    max_queue: int = Field(
        default=100_000, ge=1, description="messages held while Redis is slow; more are dropped"
    )
    receive_maximum: int = Field(
        default=65535, ge=1, le=65535, description="QoS 1 messages the broker may have in flight"
    )
    tick_s: float = Field(default=1.0, gt=0, description="fleet counter notices at most this often")
    heartbeat_s: float = Field(default=5.0, gt=0)


@dataclass
class MirrorStats:
    received: int = 0
    applied: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    batches: int = 0
    redis_errors: int = 0
    connects: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "applied": self.applied,
            "rejected": dict(self.rejected),
            "dropped": self.dropped,
            "batches": self.batches,
            "redis_errors": self.redis_errors,
            "connects": self.connects,
        }


@dataclass
class _Item:
    topic: str
    payload: bytes
    retained: bool
    at: datetime


class FleetMirror:
    """Subscribes (non-shared, clean session: the broker replays the retained
    status and reported state of every device on each connect) to
    ``cb/v1/dev/+/{status,reported,events,hard/receipt}`` and keeps
    :class:`~cloud.fleet.FleetStore` up to date.

    The MQTT network thread only queues; a writer thread parses a batch, writes
    it in two Redis round trips, then publishes one notice per changed device
    (``{"type": "device", "device", "record"}``) and, at most every
    ``tick_s``, ``{"type": "fleet", "events_per_min", "hard_per_min"}`` on
    ``settings.events_channel``. While Redis is down the folded batch is kept
    and retried (latest state per device, every count), so nothing is lost but
    messages beyond ``max_queue``.
    """

    def __init__(
        self, settings: Settings, config: MirrorConfig | None = None, *, redis: Any = None
    ) -> None:
        import redis as redis_lib

        from cloud.ingest import parse_broker_url

        self.settings = settings
        self.config = config or MirrorConfig(broker_url=settings.mqtt_url)
        self.redis = redis or redis_lib.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=5
        )
        self._redis_errors: tuple[type[BaseException], ...] = (
            redis_lib.RedisError,
            OSError,
        )
        self.store = FleetStore(self.redis, settings.fleet_prefix, settings.fleet_history_min)
        self.stats = MirrorStats()
        self._inbox: queue.Queue[_Item] = queue.Queue(maxsize=self.config.max_queue)
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._writer: threading.Thread | None = None
        self._warned: dict[str, int] = {}
        host, port, tls, user, password = parse_broker_url(self.config.broker_url)
        self._host, self._port = host, port
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.config.client_id, protocol=mqtt.MQTTv5
        )
        if user:
            c.username_pw_set(user, password)
        if tls:
            c.tls_set()
        c.reconnect_delay_set(min_delay=1, max_delay=5)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c

    # ------------------------------------------------------------------ mqtt

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        self.stats.connects += 1
        client.subscribe([(t, 1) for t in TOPICS])
        log.info("connected to %s:%s, watching %s", self._host, self._port, ", ".join(TOPICS))
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("disconnected from broker (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        item = _Item(msg.topic, msg.payload, bool(msg.retain), datetime.now(UTC))
        try:
            self._inbox.put_nowait(item)
        except queue.Full:
            self.stats.dropped += 1
            self._warn("dropped", f"queue full ({self.config.max_queue}): dropped {msg.topic}")

    # ------------------------------------------------------------- lifecycle

    def start(self) -> FleetMirror:
        """Connect and start the writer; returns at once."""
        self._writer = threading.Thread(target=self._write_loop, name="fleet-mirror", daemon=True)
        self._writer.start()
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = self.config.receive_maximum
        self.client.connect_async(
            self._host, self._port, keepalive=self.config.keepalive_s, properties=props
        )
        self.client.loop_start()
        return self

    def wait_connected(self, timeout: float = 10) -> bool:
        return self._connected.wait(timeout)

    def request_stop(self) -> None:
        """Ask :meth:`run_forever` to finish (signal-handler safe)."""
        self._stop.set()

    def stop(self) -> None:
        """Write what was received, then disconnect."""
        self._stop.set()
        self.client.disconnect()
        self.client.loop_stop()
        if self._writer is not None:
            self._writer.join(timeout=30)
        self.redis.close()

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()

    # ---------------------------------------------------------------- writer

    def _warn(self, reason: str, message: str) -> None:
        n = self._warned.get(reason, 0) + 1
        self._warned[reason] = n
        if n <= 10 or n % 1000 == 0:  # a flood of bad messages must not flood the log
            log.warning("%s (%s #%d)", message, reason, n)

    def _collect(self) -> list[_Item]:
        items: list[_Item] = []
        deadline = time.monotonic() + self.config.batch_ms / 1000
        while len(items) < self.config.max_batch:
            left = deadline - time.monotonic()
            try:
                items.append(
                    self._inbox.get(timeout=max(left, 0)) if left > 0 else self._inbox.get_nowait()
                )
            except queue.Empty:
                break
        return items

    def fold(self, items: list[_Item], batch: Batch | None = None) -> Batch:
        """Parse ``items`` into ``batch``; rejected ones are counted and logged."""
        batch = batch if batch is not None else Batch()
        for it in items:
            self.stats.received += 1
            try:
                batch.add(parse(it.topic, it.payload, retained=it.retained, now=it.at))
            except Rejected as r:
                reason = r.reason.value
                self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
                batch.reject(r.reason)
                self._warn(reason, f"rejected message on {it.topic}: {r}")
        return batch

    def _write_loop(self) -> None:
        pending = Batch()
        n_pending = 0
        failures = 0
        last_tick = last_beat = 0.0
        counted = False
        while True:
            items = self._collect()
            stopping = self._stop.is_set()
            self.fold(items, pending)
            n_pending += len(items)
            now = time.monotonic()
            try:
                if pending:
                    notices = self.store.apply(pending)
                    counted = counted or bool(pending.counts)
                    self._publish(notices)
                    self.stats.applied += n_pending
                    self.stats.batches += 1
                    pending, n_pending = Batch(), 0
                if counted and now - last_tick >= self.config.tick_s:
                    self._tick()
                    counted, last_tick = False, now
                if now - last_beat >= self.config.heartbeat_s:
                    self.store.heartbeat(self.config.client_id)
                    last_beat = now
                failures = 0
            except self._redis_errors as e:
                failures += 1
                self.stats.redis_errors += 1
                self._warn("redis", f"cannot write the fleet state to Redis: {e}; retrying")
                if stopping:
                    log.error("stopping with %d messages not written to Redis", n_pending)
                    return
                self._stop.wait(min(5.0, 0.2 * 2**failures))
                continue
            if stopping and self._inbox.empty():
                return

    def _publish(self, notices: list[dict[str, Any]]) -> None:
        if not notices:
            return
        pipe = self.redis.pipeline(transaction=False)
        for n in notices:
            pipe.publish(self.settings.events_channel, notice_json(n))
        pipe.execute()

    def _tick(self) -> None:
        now = datetime.now(UTC)
        s = self.store.series(1, now=now)
        notice = {
            "type": "fleet",
            "minute": s["minute"][-1],
            "events_per_min": round(rate_per_min(s["events"][1], s["events"][0], now), 2),
            "hard_per_min": round(rate_per_min(s["hard"][1], s["hard"][0], now), 2),
        }
        self.redis.publish(self.settings.events_channel, json.dumps(notice))

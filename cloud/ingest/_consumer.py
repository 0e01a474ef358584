"""The hard-sample consumer: MQTT v5 shared subscription -> blob store + catalog."""

from __future__ import annotations

import base64
import binascii
import ctypes
import json
import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import CollectorRegistry, Counter, start_http_server
from pydantic import BaseModel, Field
from sqlalchemy import select

from cloud.blobs import BlobStore, FileBlobStore
from cloud.catalog import Catalog, CorruptImage, SampleIn, probe_image
from cloud.catalog.models import Dataset, Sample
from cloud.core.config import Settings
from cloud.errors import Conflict
from cloud.ingest._errors import Rejected, RejectReason
from edge_agent.protocol import (
    PREFIX,
    HardSample,
    HardSampleReceipt,
    MessageInvalid,
    SchemaVersionError,
    Topics,
    decode,
    encode,
)

log = logging.getLogger("citybrain.ingest")
_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{8,128}$")

#: the pool of a ``field-<algorithm>`` dataset that hard samples go to
FIELD_POOL = "field_hard"
DATASET_PREFIX = "field-"


def field_dataset_name(algorithm: str) -> str:
    """The dataset holding the field hard cases of ``algorithm``."""
    return f"{DATASET_PREFIX}{algorithm}"


class IngestConfig(BaseModel):
    """How the consumer connects and batches (CLI options of ``citybrain ingest``)."""

    broker_url: str = Field(description="mqtt://[user:pass@]host:port (mqtts:// for TLS)")
    client_id: str = Field(
        default="citybrain-ingest-1",
        min_length=1,
        max_length=128,
        description="stable: the broker keeps this client's session while it is down",
    )
    group: str = Field(default="ingest", pattern=r"^[A-Za-z0-9_.\-]+$")
    topic: str = Field(default=Topics.ALL_HARD)
    session_expiry_s: int = Field(default=7 * 86400, ge=0, le=0xFFFFFFFF)
    batch_size: int = Field(default=100, ge=1, le=10_000)
    batch_ms: int = Field(default=200, ge=1, le=60_000)
    receive_maximum: int = Field(
        default=1000,
        ge=1,
        le=65535,
        description="unacknowledged messages the broker may push (memory bound)",
    )
    keepalive_s: int = Field(default=30, ge=5)
    max_image_bytes: int = Field(default=16 << 20, gt=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    receipts: bool = Field(
        default=True, description="publish HardSampleReceipt on dev/{d}/hard/receipt"
    )
    device_prefix: str = Field(
        default="",
        max_length=128,
        description="ingest only devices whose id starts with this (e.g. one site's or one "
        "demo's fleet on a shared broker); others are acknowledged and ignored, with no "
        "receipt: their own ingest group gets its own copy",
    )

    @property
    def subscription(self) -> str:
        return f"$share/{self.group}/{self.topic}"


@dataclass
class _Item:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int


@dataclass
class _Accepted:
    item: _Item
    sample: HardSample
    entry: SampleIn
    dataset: str


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0
    duplicate: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    db_errors: int = 0
    connects: int = 0
    ignored: int = 0  # other devices (device_prefix)

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "stored": self.stored,
            "duplicate": self.duplicate,
            "rejected": dict(self.rejected),
            "rejected_total": sum(self.rejected.values()),
            "batches": self.batches,
            "db_errors": self.db_errors,
            "connects": self.connects,
            "ignored": self.ignored,
        }


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "citybrain_ingest_received", "hard-sample messages received", registry=registry
        )
        self.stored = Counter(
            "citybrain_ingest_stored", "hard samples stored (new)", registry=registry
        )
        self.duplicate = Counter(
            "citybrain_ingest_duplicate",
            "hard samples already stored (same idempotency key or bytes)",
            registry=registry,
        )
        self.rejected = Counter(
            "citybrain_ingest_rejected",
            "hard-sample messages rejected",
            ["reason"],
            registry=registry,
        )


def parse_broker_url(url: str) -> tuple[str, int, bool, str | None, str | None]:
    """host, port, tls, username, password of ``mqtt[s]://[user:pass@]host[:port]``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"broker URL must be mqtt://host:port or mqtts://host:port, got {url!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (8883 if tls else 1883)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return host, port, tls, user, password


def _sample_id(payload: bytes) -> str | None:
    """The ``id`` of a rejected message, when it has a usable one."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    sid = data.get("id") if isinstance(data, dict) else None
    if isinstance(sid, str) and _ID_RE.match(sid):
        return sid
    return None


def _syncfs(path: os.PathLike[str] | str) -> None:
    """Flush the file system holding ``path`` (one call for a whole batch of blobs)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            if ctypes.CDLL(None, use_errno=True).syncfs(fd) == 0:
                return
        except (OSError, AttributeError):
            pass
        os.sync()
    finally:
        os.close(fd)


class HardSampleIngest:
    """Consumes ``$share/<group>/cb/v1/dev/+/hard`` into the catalog, exactly once.

    The MQTT network thread only queues messages; a writer thread validates
    them, stores image bytes in the blob store, commits a batch of Sample +
    DatasetSample rows in one transaction (duplicates by idempotency key are
    skipped), and only then acknowledges the batch's messages (manual PUBACK).
    A crash before the commit means the broker redelivers, never a loss; a
    redelivery after the commit is recognised by its idempotency key.
    """

    def __init__(
        self,
        settings: Settings,
        config: IngestConfig | None = None,
        *,
        catalog: Catalog | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or IngestConfig(broker_url=settings.mqtt_url)
        self.catalog = catalog or Catalog.open(settings)
        # blobs of a batch are written without one fsync each and flushed
        # together (syncfs) before the rows naming them are committed
        self._blobs: BlobStore = self.catalog.blobs
        self._blob_root: os.PathLike[str] | None = None
        if isinstance(self.catalog.blobs, FileBlobStore):
            self._blobs = FileBlobStore(self.catalog.blobs.root, fsync=False)
            self._blob_root = self.catalog.blobs.root
        self.registry = registry or CollectorRegistry()
        self.metrics = _Metrics(self.registry)
        self.stats = IngestStats()
        self._inbox: queue.Queue[_Item] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # generation + connected, vs. acks
        self._generation = 0
        self._connected = False
        self._connected_event = threading.Event()
        self._datasets: dict[str, int] = {}
        self._receipts: dict[str, HardSampleReceipt] = {}  # per batch, by device
        self._writer: threading.Thread | None = None
        self._metrics_server: Any = None
        self.client = self._make_client()

    # ------------------------------------------------------------------ mqtt

    def _make_client(self) -> mqtt.Client:
        c = self.config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=c.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        host, port, tls, user, password = parse_broker_url(c.broker_url)
        self._host, self._port = host, port
        if user:
            client.username_pw_set(user, password)
        if tls:
            client.tls_set()
        client.reconnect_delay_set(min_delay=0.1, max_delay=2)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        with self._lock:
            self._generation += 1
            self._connected = True
        self.stats.connects += 1
        client.subscribe(self.config.subscription, qos=1)
        log.info(
            "connected to %s:%s (session present: %s), subscribed %s",
            self._host,
            self._port,
            flags.session_present,
            self.config.subscription,
        )
        self._connected_event.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._lock:
            self._connected = False
        self._connected_event.clear()
        if not self._stop.is_set():
            log.warning("disconnected from broker (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # network thread: no I/O here, only hand over
        self._inbox.put(_Item(msg.topic, msg.payload, msg.mid, msg.qos, self._generation))

    def _ack(self, items: list[_Item]) -> None:
        with self._lock:
            if not self._connected:
                return  # redelivered on the next session; the idempotency key dedups it
            for it in items:
                if it.qos > 0 and it.generation == self._generation:
                    self.client.ack(it.mid, it.qos)

    # ------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Connect (persistent session) and start the writer; returns at once."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        props.ReceiveMaximum = self.config.receive_maximum
        if self.config.metrics_port is not None:
            self._metrics_server = start_http_server(
                self.config.metrics_port, registry=self.registry
            )
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._writer.start()
        self.client.connect_async(
            self._host,
            self._port,
            keepalive=self.config.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()

    def request_stop(self) -> None:
        """Ask :meth:`run_forever` to finish (signal-handler safe)."""
        self._stop.set()

    def wait_connected(self, timeout: float = 10) -> bool:
        return self._connected_event.wait(timeout)

    def stop(self) -> None:
        """Store and acknowledge what was received, then disconnect (the session stays)."""
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout=60)
        self.client.disconnect()
        self.client.loop_stop()
        if self._metrics_server is not None:
            server = self._metrics_server[0]
            server.shutdown()
            server.server_close()
            self._metrics_server = None
        self.catalog.close()

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()

    # ---------------------------------------------------------------- writer

    def _write_loop(self) -> None:
        c = self.config
        failures = 0
        pending: list[_Item] = []
        while True:
            deadline = time.monotonic() + c.batch_ms / 1000
            while len(pending) < c.batch_size:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    pending.append(self._inbox.get(timeout=timeout))
                except queue.Empty:
                    break
            if self._stop.is_set():
                while True:  # drain what already arrived
                    try:
                        pending.append(self._inbox.get_nowait())
                    except queue.Empty:
                        break
            if pending:
                try:
                    self.process(pending)
                    pending = []
                    failures = 0
                except Exception:
                    failures += 1
                    self.stats.db_errors += 1
                    log.exception("could not store a batch of %d; retrying", len(pending))
                    if self._stop.wait(min(10.0, 0.2 * 2**failures)) and failures > 3:
                        log.error(
                            "giving up on %d unacknowledged messages at shutdown", len(pending)
                        )
                        return  # not acked: the broker redelivers them
                    continue
            if self._stop.is_set() and self._inbox.empty():
                return

    def process(self, items: list[_Item]) -> None:
        """Validate, store and commit ``items``, send receipts, then acknowledge them."""
        accepted: list[_Accepted] = []
        self._receipts = {}
        prefix = f"{PREFIX}dev/{self.config.device_prefix}"
        for it in items:
            if self.config.device_prefix and not it.topic.startswith(prefix):
                self.stats.ignored += 1
                continue
            self.stats.received += 1
            self.metrics.received.inc()
            try:
                accepted.append(self._validate(it))
            except Rejected as r:
                self._reject(r, it)
        refused = self._commit(accepted)
        for a in accepted:
            if id(a) not in refused:
                self._receipt(a.item).stored.append(a.sample.id)
        self.stats.batches += 1
        self._send_receipts()
        self._ack(items)

    def _receipt(self, it: _Item) -> HardSampleReceipt:
        device = Topics.device_of(it.topic)
        if device not in self._receipts:
            self._receipts[device] = HardSampleReceipt(device=device)
        return self._receipts[device]

    def _send_receipts(self) -> None:
        if not self.config.receipts:
            return
        for device, receipt in self._receipts.items():
            if not receipt.stored and not receipt.rejected:
                continue
            with self._lock:
                if not self._connected:
                    return  # the device re-sends; the duplicate gets a receipt then
                self.client.publish(Topics.hard_receipt(device), encode(receipt), qos=1)

    def _reject(self, r: Rejected, it: _Item) -> None:
        reason = r.reason.value
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        self.metrics.rejected.labels(reason=reason).inc()
        log.warning("rejected message on %s: %s", it.topic, r)
        if r.reason == RejectReason.TOPIC:
            return
        sample_id = _sample_id(it.payload)
        if sample_id is not None:  # tell the device to stop re-sending it
            self._receipt(it).rejected[sample_id] = f"{reason}: {r.detail}"[:500]

    def _validate(self, it: _Item) -> _Accepted:
        try:
            topic_device = Topics.device_of(it.topic)
        except MessageInvalid as e:
            raise Rejected(RejectReason.TOPIC, str(e)) from None
        if it.topic != f"{PREFIX}dev/{topic_device}/hard":
            raise Rejected(RejectReason.TOPIC, f"not a hard-sample topic: {it.topic!r}")
        try:
            sample = decode(it.payload, HardSample)
        except SchemaVersionError as e:
            raise Rejected(RejectReason.SCHEMA, str(e)) from None
        except MessageInvalid as e:
            raise Rejected(RejectReason.MALFORMED, str(e)) from None
        if sample.device != topic_device:
            raise Rejected(
                RejectReason.DEVICE_MISMATCH,
                f"sample {sample.id} says device {sample.device!r} on topic of {topic_device!r}",
            )
        dataset = field_dataset_name(sample.algorithm)
        if len(dataset) > 128:
            raise Rejected(RejectReason.BAD_ALGORITHM, f"algorithm id too long: {sample.algorithm}")
        blobs = self._blobs
        if sample.image_jpeg_b64 is not None:
            if len(sample.image_jpeg_b64) > self.config.max_image_bytes * 4 // 3 + 4:
                raise Rejected(RejectReason.BAD_IMAGE, f"sample {sample.id}: image too large")
            try:
                data = base64.b64decode(sample.image_jpeg_b64, validate=True)
            except (binascii.Error, ValueError) as e:
                raise Rejected(
                    RejectReason.MALFORMED, f"sample {sample.id}: image_jpeg_b64: {e}"
                ) from None
            sha = None
        else:
            sha = sample.blob_ref
            assert sha is not None
            if not blobs.exists(sha):
                raise Rejected(RejectReason.BLOB_MISSING, f"sample {sample.id}: no blob {sha}")
            data = blobs.get(sha)
        try:
            info = probe_image(data, f"hard sample {sample.id}")
        except CorruptImage as e:
            raise Rejected(RejectReason.BAD_IMAGE, str(e)) from None
        if info.media_type != "image/jpeg":
            raise Rejected(
                RejectReason.BAD_IMAGE, f"sample {sample.id}: {info.media_type}, expected JPEG"
            )
        if sha is None:
            sha = blobs.put(data)  # idempotent, atomic; before the rows that name it
        entry = SampleIn(
            id=sha,
            media_type=info.media_type,
            width=info.width,
            height=info.height,
            size=len(data),
            phash=info.phash,
            source=it.topic,
            camera=sample.stream[:128],
            device=sample.device,
            model_version=sample.model_version,
            captured_at=sample.captured_at,
            reason=sample.reason,
            selector=sample.selector[:64],
            scores=dict(sample.scores),
            idempotency_key=sample.id,
        )
        return _Accepted(it, sample, entry, dataset)

    def _dataset_id(self, name: str) -> int:
        if name in self._datasets:
            return self._datasets[name]
        with self.catalog.sessions() as s:
            ds_id = s.scalar(select(Dataset.id).where(Dataset.name == name))
        if ds_id is None:
            try:
                ds_id = self.catalog.create_dataset(
                    name,
                    description="hard cases sent back by edge devices (pool field_hard)",
                    created_by="ingest",
                ).id
            except Conflict:  # another consumer made it first
                ds_id = self.catalog.get_dataset(name).id
        self._datasets[name] = ds_id
        return ds_id

    def _commit(self, accepted: list[_Accepted]) -> set[int]:
        """Commit the accepted samples; returns ``id()`` of those refused (key conflicts)."""
        if not accepted:
            return set()
        if self._blob_root is not None:
            _syncfs(self._blob_root)
        try:
            stored, dups, conflicts = self._commit_batch(accepted)
        except Conflict:
            # another consumer committed one of these keys for other bytes meanwhile
            stored = dups = 0
            conflicts = []
            for a in accepted:
                try:
                    s, d, c = self._commit_batch([a])
                except Conflict:
                    s, d, c = 0, 0, [a]
                stored, dups, conflicts = stored + s, dups + d, conflicts + c
        for a in conflicts:
            self._reject(
                Rejected(
                    RejectReason.KEY_CONFLICT,
                    f"sample {a.sample.id}: idempotency key already used for other bytes",
                ),
                a.item,
            )
        self.stats.stored += stored
        self.stats.duplicate += dups
        self.metrics.stored.inc(stored)
        self.metrics.duplicate.inc(dups)
        return {id(a) for a in conflicts}

    def _commit_batch(self, accepted: list[_Accepted]) -> tuple[int, int, list[_Accepted]]:
        """One transaction; returns (new samples stored, duplicates, key conflicts)."""
        by_dataset: dict[int, list[SampleIn]] = {}
        keys = [a.entry.idempotency_key for a in accepted]
        shas = [a.entry.id for a in accepted]
        for a in accepted:
            self._dataset_id(a.dataset)
        conflicts: list[_Accepted] = []
        with self.catalog.transaction() as s:
            key_sha: dict[str, str] = dict(
                s.execute(
                    select(Sample.idempotency_key, Sample.id).where(
                        Sample.idempotency_key.in_(keys)
                    )
                ).all()
            )
            known_shas = set(s.scalars(select(Sample.id).where(Sample.id.in_(shas))))
            stored = dups = 0
            for a in accepted:
                key, sha = a.entry.idempotency_key, a.entry.id
                assert key is not None
                if key in key_sha:  # stored before, or earlier in this batch
                    if key_sha[key] != sha:
                        conflicts.append(a)
                    else:
                        dups += 1
                    continue
                key_sha[key] = sha
                if sha in known_shas:
                    dups += 1  # same bytes sent again under another key: one sample
                else:
                    stored += 1
                    known_shas.add(sha)
                by_dataset.setdefault(self._datasets[a.dataset], []).append(a.entry)
            for ds_id, entries in by_dataset.items():
                self.catalog.add_samples(
                    ds_id, entries, pool=FIELD_POOL, check_blobs=False, session=s
                )
        return stored, dups, conflicts

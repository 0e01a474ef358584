"""MQTT side of the store: retained signed announcements and the chunk service
(``store/chunk/req`` -> the request's MQTT v5 response topic ``dev/{d}/chunk``),
in one process or as several worker processes on a shared subscription."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBLISH
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.protocol import (
    PREFIX,
    Announcement,
    ChunkReplyHeader,
    ChunkRequest,
    ProtocolError,
    Topics,
    decode,
    encode,
)

from ._errors import NotFound, StoreError
from ._store import AlgorithmStore

log = logging.getLogger(__name__)

_ZERO_SHA = "0" * 64

#: the protocol's largest chunk (``ChunkRequest.length``)
MAX_CHUNK = 4 * 1024 * 1024
#: room for a reply's fixed header, topic, packet id and header properties
_REPLY_OVERHEAD = 2048
#: payloads from this size on are written without joining them to their header
_GATHER_MIN = 65536
#: Maximum Packet Size the broker announced in CONNACK (None: no limit said)
_BROKER_MAX_PACKET: weakref.WeakKeyDictionary[mqtt.Client, int | None] = weakref.WeakKeyDictionary()


def broker_max_packet(client: mqtt.Client) -> int | None:
    """The MQTT v5 Maximum Packet Size the broker announced to ``client``
    (None when it announced none, or the client was not made by :func:`connect`)."""
    return _BROKER_MAX_PACKET.get(client)


def _record_connack(client: mqtt.Client, props: Any) -> None:
    _BROKER_MAX_PACKET[client] = getattr(props, "MaximumPacketSize", None) if props else None


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of ``mqtt://host:port`` or ``mqtts://host:port``."""
    u = urlparse(url)
    if u.scheme not in ("mqtt", "mqtts", "tcp") or not u.hostname:
        raise StoreError(f"broker URL {url!r}: expected mqtt://host:port", field="mqtt_url")
    tls = u.scheme == "mqtts"
    return u.hostname, u.port or (8883 if tls else 1883), tls


class _Gather:
    """A queued PUBLISH kept as its header and its payload, written with one
    ``sendmsg`` (no joined copy). paho slices the queued packet from the
    written position (``packet[pos:]``) before each write; so does this."""

    __slots__ = ("head", "payload")

    def __init__(self, head: memoryview, payload: memoryview) -> None:
        self.head, self.payload = head, payload

    def __len__(self) -> int:
        return len(self.head) + len(self.payload)

    def __getitem__(self, rest: slice) -> _Gather:
        pos = rest.start or 0
        if pos < len(self.head):
            return _Gather(self.head[pos:], self.payload)
        return _Gather(self.head[:0], self.payload[pos - len(self.head) :])


class _Client(mqtt.Client):
    """paho's client without copying large payloads: paho joins header and
    payload into one bytearray and re-slices it (another copy) before every
    socket write; here a large MQTT v5 PUBLISH on a plain TCP socket stays
    header + payload and is written with ``sendmsg``. Everything else
    (QoS, retries, TLS, small messages) is paho's own path."""

    def _send_publish(
        self,
        mid: int,
        topic: bytes,
        payload: bytes | bytearray = b"",
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        info: Any = None,
        properties: Properties | None = None,
    ) -> Any:
        sock = self._sock
        if (
            len(payload) < _GATHER_MIN
            or self._protocol != mqtt.MQTTv5
            or type(sock) is not socket.socket
            or not isinstance(topic, bytes)
        ):
            return super()._send_publish(mid, topic, payload, qos, retain, dup, info, properties)
        props = properties.pack() if properties is not None else b"\x00"
        head = bytearray([PUBLISH | ((dup & 1) << 3) | (qos << 1) | retain])
        length = 2 + len(topic) + (2 if qos > 0 else 0) + len(props) + len(payload)
        self._pack_remaining_length(head, length)
        self._pack_str16(head, topic)
        if qos > 0:
            head += mid.to_bytes(2, "big")
        head += props
        packet = _Gather(memoryview(bytes(head)), memoryview(payload))
        return self._packet_queue(PUBLISH, packet, mid, qos, info)  # type: ignore[arg-type]

    def _sock_send(self, buf: Any) -> int:
        if isinstance(buf, _Gather):
            if type(self._sock) is socket.socket:
                return self._sock.sendmsg([buf.head, buf.payload])
            buf = bytes(buf.head) + bytes(buf.payload)  # the socket changed under us
        return super()._sock_send(buf)


def connect(
    url: str, *, client_id: str | None = None, timeout: float = 10.0, max_inflight: int = 200
) -> mqtt.Client:
    """A connected MQTT v5 client with its network loop running."""
    host, port, tls = parse_broker_url(url)
    client = _Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"cb-store-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    u = urlparse(url)
    if u.username:
        client.username_pw_set(u.username, u.password)
    if tls:
        client.tls_set()
    client.max_inflight_messages_set(max_inflight)
    connected = threading.Event()

    def on_connect(c: mqtt.Client, ud: Any, flags: Any, rc: Any, props: Any = None) -> None:
        _record_connack(c, props)
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=30)
    except OSError as e:
        raise StoreError(f"cannot reach the broker at {url}: {e}", field="mqtt_url") from None
    with contextlib.suppress(OSError, AttributeError):  # small requests/acks must not wait (Nagle)
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.loop_start()
    if not connected.wait(timeout):
        client.loop_stop()
        raise StoreError(f"the broker at {url} did not accept the connection", field="mqtt_url")
    return client


class MqttAnnouncer:
    """Publishes announcements retained (QoS 1) on ``store/announce/{a}``.

    Give a connected paho client or a broker URL (a client is then created)."""

    def __init__(self, client_or_url: mqtt.Client | str, *, timeout: float = 10.0) -> None:
        self._own = isinstance(client_or_url, str)
        self.client = connect(client_or_url) if isinstance(client_or_url, str) else client_or_url
        self.timeout = timeout

    def __call__(self, announcement: Announcement) -> None:
        info = self.client.publish(
            Topics.announce(announcement.algorithm), encode(announcement), qos=1, retain=True
        )
        info.wait_for_publish(self.timeout)
        if info.rc != mqtt.MQTT_ERR_SUCCESS or not info.is_published():
            raise StoreError(
                f"announcement for {announcement.algorithm} not published (rc {info.rc})"
            )

    def close(self) -> None:
        if self._own:
            self.client.loop_stop()
            self.client.disconnect()


@dataclass
class ChunkStats:
    served: int = 0
    bytes_sent: int = 0
    not_found: int = 0
    bad_request: int = 0
    rejected: int = 0
    last_reject: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


class ChunkService:
    """Answers chunk requests for published, signed artifacts of ``store``.

    The reply goes to the request's MQTT v5 ResponseTopic, which must be
    ``dev/{request.device}/chunk`` (anything else is refused and counted, so a
    client cannot make the store write to another topic); the request's
    CorrelationData is echoed; the :class:`ChunkReplyHeader` travels as user
    properties and the raw bytes as the payload. An unpublished sha256 gets
    ``status=not_found`` with an empty payload.
    """

    def __init__(
        self,
        store: AlgorithmStore,
        client_or_url: mqtt.Client | str,
        *,
        share_group: str | None = None,
        max_chunk: int = MAX_CHUNK,
        cache_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if not 0 < max_chunk <= MAX_CHUNK:
            raise StoreError(
                f"max_chunk {max_chunk}: must be 1..{MAX_CHUNK} bytes", field="max_chunk"
            )
        self.store = store
        # several serving processes split the requests with an MQTT v5 shared subscription
        self.request_filter = (
            f"$share/{share_group}/{Topics.CHUNK_REQUEST}" if share_group else Topics.CHUNK_REQUEST
        )
        self.max_chunk = max_chunk
        self._url = client_or_url if isinstance(client_or_url, str) else None
        self.client: mqtt.Client | None = None if self._url else client_or_url  # type: ignore[assignment]
        self.stats = ChunkStats()
        self._fds: dict[str, int] = {}
        self._hashes: dict[tuple[str, int, int], str] = {}
        # hot chunks: a fleet fetching one release asks for the same chunks
        self._hot: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._hot_bytes = 0
        self.cache_bytes = cache_bytes
        self._fd_lock = threading.Lock()
        self.subscribed = threading.Event()

    @property
    def chunk_limit(self) -> int:
        """Largest chunk served: ``max_chunk``, less when the broker's Maximum
        Packet Size (from CONNACK) would not carry a reply that big."""
        broker = broker_max_packet(self.client) if self.client is not None else None
        if broker:
            return max(0, min(self.max_chunk, broker - _REPLY_OVERHEAD))
        return self.max_chunk

    def _limit_reason(self) -> str:
        broker = broker_max_packet(self.client) if self.client is not None else None
        if broker and broker - _REPLY_OVERHEAD < self.max_chunk:
            return f"the broker's maximum packet size is {broker} bytes"
        return "this store's chunk limit"

    # -- lifecycle --------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> ChunkService:
        if self.client is None:
            assert self._url is not None
            self.client = connect(self._url, client_id=f"cb-store-chunks-{uuid.uuid4().hex[:6]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a, **k: self.subscribed.set()

        def on_connect(c: mqtt.Client, ud: Any, flags: Any, rc: Any, props: Any = None) -> None:
            _record_connack(c, props)
            self._subscribe()

        self.client.on_connect = on_connect
        self._subscribe()
        if not self.subscribed.wait(timeout):
            raise StoreError("chunk service: subscription to the request topic not acknowledged")
        return self

    def _subscribe(self) -> None:
        assert self.client is not None
        self.client.subscribe(self.request_filter, options=mqtt.SubscribeOptions(qos=1))

    def stop(self) -> None:
        if self.client is not None and self._url is not None:
            self.client.loop_stop()
            self.client.disconnect()
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __enter__(self) -> ChunkService:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- handling ---------------------------------------------------------------

    def _fd(self, sha: str) -> tuple[int, int]:
        path, size = self.store.published_artifact(sha)
        with self._fd_lock:
            fd = self._fds.get(sha)
            if fd is None:
                fd = os.open(path, os.O_RDONLY)
                self._fds[sha] = fd
        return fd, size

    def _read(self, sha: str, fd: int, offset: int, length: int) -> bytes:
        """The chunk's bytes, from the hot-chunk LRU or the blob."""
        key = (sha, offset, length)
        data = self._hot.get(key)
        if data is not None:
            self._hot.move_to_end(key)
            return data
        data = os.pread(fd, length, offset)
        if len(data) == length and length <= self.cache_bytes // 8:
            self._hot[key] = data
            self._hot_bytes += length
            while self._hot_bytes > self.cache_bytes:
                _, old = self._hot.popitem(last=False)
                self._hot_bytes -= len(old)
        return data

    def _chunk_hash(self, sha: str, offset: int, data: bytes) -> str:
        """sha256 of a chunk; artifacts are immutable, so the hashes of chunks
        many devices ask for (a fleet fetching one release) are remembered."""
        key = (sha, offset, len(data))
        hit = self._hashes.get(key)
        if hit is None:
            hit = hashlib.sha256(data).hexdigest()
            if len(self._hashes) >= 65536:
                self._hashes.pop(next(iter(self._hashes)))
            self._hashes[key] = hit
        return hit

    def _reject(self, why: str) -> None:
        self.stats.add(rejected=1)
        self.stats.last_reject = why
        log.warning("chunk request refused: %s", why)

    def _refuse(
        self,
        topic: str,
        corr: bytes | None,
        status: str,
        error: str,
        *,
        req: ChunkRequest | None = None,
        total: int = 0,
    ) -> None:
        """Count and answer a request that gets no bytes (``status`` names the counter)."""
        self.stats.add(**{status: 1})
        header = ChunkReplyHeader(
            sha256=req.sha256 if req else _ZERO_SHA,
            offset=req.offset if req else 0,
            length=0,
            total=total,
            status=status,
            error=error,
        )
        self._reply(topic, corr, header)

    def _reply(
        self, topic: str, corr: bytes | None, header: ChunkReplyHeader, payload: bytes = b""
    ) -> None:
        assert self.client is not None
        props = Properties(PacketTypes.PUBLISH)
        if corr is not None:
            props.CorrelationData = corr
        props.UserProperty = header.to_user_properties()
        self.client.publish(topic, payload, qos=1, properties=props)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.handle(msg.payload, getattr(msg, "properties", None))
        except Exception as e:  # never let one request kill the service
            log.exception("chunk request failed")
            self._reject(f"internal error: {e}")

    def handle(self, payload: bytes, properties: Properties | None) -> None:
        """Serve one request (called from the MQTT loop)."""
        response_topic = getattr(properties, "ResponseTopic", None) if properties else None
        corr = getattr(properties, "CorrelationData", None) if properties else None
        if not response_topic:
            self._reject("no MQTT v5 response topic")
            return
        try:
            req = decode(payload, ChunkRequest)
        except ProtocolError as e:
            parts = response_topic.split("/")
            if (
                response_topic.startswith(PREFIX + "dev/")
                and len(parts) == 5
                and parts[4] == "chunk"
            ):
                self._refuse(response_topic, corr, "bad_request", str(e)[:300])
            self._reject(f"invalid request: {e}")
            return
        expected = Topics.chunk(req.device)
        if response_topic != expected:
            self._reject(
                f"device {req.device}: response topic {response_topic!r} is not {expected!r}"
            )
            return
        try:
            fd, total = self._fd(req.sha256)
        except NotFound as e:
            self._refuse(expected, corr, "not_found", str(e), req=req)
            return
        if req.offset >= total:
            error = f"offset {req.offset} is past the end ({total} bytes)"
            self._refuse(expected, corr, "bad_request", error, req=req, total=total)
            return
        length = min(req.length, total - req.offset)
        limit = self.chunk_limit
        broker = broker_max_packet(self.client) if self.client is not None else None
        if broker and corr:  # the echoed correlation data travels in the same packet
            limit = max(0, min(limit, broker - _REPLY_OVERHEAD - len(corr)))
        if length > limit:
            error = (
                f"chunk of {length} bytes is over the limit of {limit} bytes "
                f"({self._limit_reason()}); ask for at most {limit}"
            )
            self._refuse(expected, corr, "bad_request", error, req=req, total=total)
            return
        data = self._read(req.sha256, fd, req.offset, length)
        header = ChunkReplyHeader(
            sha256=req.sha256,
            offset=req.offset,
            length=len(data),
            total=total,
            chunk_sha256=self._chunk_hash(req.sha256, req.offset, data),
        )
        self._reply(expected, corr, header, data)
        self.stats.add(served=1, bytes_sent=len(data))


_COUNTERS = ("served", "bytes_sent", "not_found", "bad_request", "rejected")


def _chunk_worker(
    root: str,
    url: str,
    share_group: str,
    max_chunk: int,
    slot: int,
    shared: Any,
    ready: Any,
    stop: Any,
    parent: int,
) -> None:
    """One worker process: a ChunkService on the shared subscription; its
    counters are copied into ``shared[slot]`` every 0.2 s and on exit. It
    ends when ``stop.value`` is set or its parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    from ._store import AlgorithmStore

    svc = ChunkService(AlgorithmStore(root), url, share_group=share_group, max_chunk=max_chunk)
    svc.start()
    ready.set()
    base = slot * len(_COUNTERS)

    def publish_stats() -> None:
        for i, name in enumerate(_COUNTERS):
            shared[base + i] = getattr(svc.stats, name)

    try:
        # polled flags, not an Event: a worker killed inside Event.wait would
        # leave the Event's condition waiting for it forever
        while not stop.value and os.getppid() == parent:
            publish_stats()
            time.sleep(0.2)
    finally:
        publish_stats()
        svc.stop()


class ChunkWorkers:
    """``workers`` chunk-service processes on one MQTT v5 shared subscription
    (``$share/{share_group}/cb/v1/store/chunk/req``): the broker hands each
    request to exactly one of them, so serving scales past one Python process
    (one GIL). A worker that dies is started again by :meth:`revive`."""

    def __init__(
        self,
        store_root: Path | str,
        url: str,
        *,
        workers: int,
        share_group: str = "store",
        max_chunk: int = MAX_CHUNK,
    ) -> None:
        if workers < 1:
            raise StoreError(f"workers {workers}: must be at least 1", field="workers")
        if not 0 < max_chunk <= MAX_CHUNK:
            raise StoreError(
                f"max_chunk {max_chunk}: must be 1..{MAX_CHUNK} bytes", field="max_chunk"
            )
        parse_broker_url(url)
        self.root = str(store_root)
        self.url = url
        self.workers = workers
        self.share_group = share_group
        self.max_chunk = max_chunk
        self._ctx = mp.get_context("spawn")
        self._shared = self._ctx.Array("q", workers * len(_COUNTERS), lock=False)
        self._stop = self._ctx.Value("b", 0, lock=False)
        self._procs: list[Any] = [None] * workers
        self.restarts = 0

    def _spawn(self, slot: int, timeout: float) -> None:
        ready = self._ctx.Event()
        p = self._ctx.Process(
            target=_chunk_worker,
            args=(
                self.root,
                self.url,
                self.share_group,
                self.max_chunk,
                slot,
                self._shared,
                ready,
                self._stop,
                os.getpid(),
            ),
            name=f"cb-chunks-{slot}",
            daemon=True,
        )
        p.start()
        self._procs[slot] = p
        waited = 0.0
        while not ready.wait(0.1):
            waited += 0.1
            if not p.is_alive() or waited >= timeout:
                p.kill()
                p.join(5)
                raise StoreError(
                    f"chunk worker {slot} did not start (exit code {p.exitcode}); "
                    f"is the broker at {self.url} reachable?",
                    field="mqtt_url",
                )

    def start(self, timeout: float = 30.0) -> ChunkWorkers:
        try:
            for slot in range(self.workers):
                self._spawn(slot, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.pid is not None]

    def revive(self, timeout: float = 30.0) -> int:
        """Start again every worker that exited; returns how many."""
        n = 0
        for slot, p in enumerate(self._procs):
            if p is not None and not p.is_alive() and not self._stop.value:
                log.warning("chunk worker %d exited (%s); starting it again", slot, p.exitcode)
                self._spawn(slot, timeout)
                self.restarts += 1
                n += 1
        return n

    def per_worker(self) -> list[ChunkStats]:
        """Each worker's counters (as of its last report, at most 0.2 s old)."""
        k = len(_COUNTERS)
        return [
            ChunkStats(**{name: self._shared[w * k + i] for i, name in enumerate(_COUNTERS)})
            for w in range(self.workers)
        ]

    @property
    def stats(self) -> ChunkStats:
        """All workers' counters summed."""
        total = ChunkStats()
        for s in self.per_worker():
            total.add(**{name: getattr(s, name) for name in _COUNTERS})
        return total

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.value = 1
        for p in self._procs:
            if p is not None:
                p.join(timeout)
                if p.is_alive():
                    p.kill()
                    p.join(5)

    def __enter__(self) -> ChunkWorkers:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

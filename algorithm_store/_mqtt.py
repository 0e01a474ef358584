"""MQTT side of the store: retained signed announcements and the chunk service
(``store/chunk/req`` -> the request's MQTT v5 response topic ``dev/{d}/chunk``)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
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


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of ``mqtt://host:port`` or ``mqtts://host:port``."""
    u = urlparse(url)
    if u.scheme not in ("mqtt", "mqtts", "tcp") or not u.hostname:
        raise StoreError(f"broker URL {url!r}: expected mqtt://host:port", field="mqtt_url")
    tls = u.scheme == "mqtts"
    return u.hostname, u.port or (8883 if tls else 1883), tls


def connect(
    url: str, *, client_id: str | None = None, timeout: float = 10.0, max_inflight: int = 200
) -> mqtt.Client:
    """A connected MQTT v5 client with its network loop running."""
    host, port, tls = parse_broker_url(url)
    client = mqtt.Client(
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
    client.on_connect = lambda c, ud, flags, rc, props=None: connected.set()
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
    ) -> None:
        self.store = store
        # several serving processes split the requests with an MQTT v5 shared subscription
        self.request_filter = (
            f"$share/{share_group}/{Topics.CHUNK_REQUEST}" if share_group else Topics.CHUNK_REQUEST
        )
        self._url = client_or_url if isinstance(client_or_url, str) else None
        self.client: mqtt.Client | None = None if self._url else client_or_url  # type: ignore[assignment]
        self.stats = ChunkStats()
        self._fds: dict[str, int] = {}
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._fd_lock = threading.Lock()
        self.subscribed = threading.Event()

    # -- lifecycle --------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> ChunkService:
        if self.client is None:
            assert self._url is not None
            self.client = connect(self._url, client_id=f"cb-store-chunks-{uuid.uuid4().hex[:6]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a, **k: self.subscribed.set()
        self.client.on_connect = lambda c, *a, **k: self._subscribe()
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
                self.stats.add(bad_request=1)
                self._reply(
                    response_topic,
                    corr,
                    ChunkReplyHeader(
                        sha256=_ZERO_SHA,
                        offset=0,
                        length=0,
                        total=0,
                        status="bad_request",
                        error=str(e)[:300],
                    ),
                )
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
            self.stats.add(not_found=1)
            self._reply(
                expected,
                corr,
                ChunkReplyHeader(
                    sha256=req.sha256,
                    offset=req.offset,
                    length=0,
                    total=0,
                    status="not_found",
                    error=str(e),
                ),
            )
            return
        if req.offset >= total:
            self.stats.add(bad_request=1)
            self._reply(
                expected,
                corr,
                ChunkReplyHeader(
                    sha256=req.sha256,
                    offset=req.offset,
                    length=0,
                    total=total,
                    status="bad_request",
                    error=f"offset {req.offset} is past the end ({total} bytes)",
                ),
            )
            return
        data = os.pread(fd, min(req.length, total - req.offset), req.offset)
        header = ChunkReplyHeader(
            sha256=req.sha256,
            offset=req.offset,
            length=len(data),
            total=total,
            chunk_sha256=self._chunk_hash(req.sha256, req.offset, data),
        )
        self._reply(expected, corr, header, data)
        self.stats.add(served=1, bytes_sent=len(data))

"""The device's MQTT v5 session (paho-mqtt 2.x, callback API v2).

Persistent session (clean_start False + session expiry), last will ``offline``
(retained) on ``dev/{d}/status``, ``online`` + hardware profile (retained) on
every connect, automatic reconnect with backoff, subscriptions restored on
every connect. Handlers never raise into paho: an exception is logged and
counted. Publishes are tracked by mid so callers learn about the PUBACK.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent._config import AgentConfig
from edge_agent._stats import Stats
from edge_agent.protocol import DeviceStatus, HardwareProfile, Topics, encode

log = logging.getLogger("edge_agent.session")

Handler = Callable[[mqtt.MQTTMessage], None]
AckCallback = Callable[[int], None]  # reason code value; < 0x80 = accepted


class Session:
    """One MQTT connection for one device."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        agent_version: str,
        hardware: HardwareProfile | None,
        stats: Stats,
    ) -> None:
        self.cfg = cfg
        self.device = cfg.device_id
        self.stats = stats
        self._hardware = hardware
        self._agent_version = agent_version
        self._handlers: dict[str, Handler] = {}
        self._on_connect_hooks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._pending: dict[int, AckCallback | None] = {}
        self._early: dict[int, int] = {}
        self.connected = threading.Event()
        self._closing = False

        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.device_id,
            protocol=mqtt.MQTTv5,
        )
        c.username_pw_set(
            cfg.mqtt_username, cfg.password.get_secret_value() if cfg.password else None
        )
        if cfg.broker_tls:
            c.tls_set(
                ca_certs=str(cfg.tls_ca) if cfg.tls_ca else None,
                certfile=str(cfg.tls_cert) if cfg.tls_cert else None,
                keyfile=str(cfg.tls_key) if cfg.tls_key else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        c.will_set(Topics.status(self.device), self._status("offline"), qos=1, retain=True)
        c.reconnect_delay_set(max(1, int(cfg.reconnect_min_s)), max(1, int(cfg.reconnect_max_s)))
        c.max_inflight_messages_set(max(20, cfg.hard.publish_window + cfg.chunk_window + 4))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        self.client = c

    # -- lifecycle ---------------------------------------------------------
    def subscribe(self, topic: str, handler: Handler) -> None:
        """Register ``handler`` for ``topic``; (re)subscribed on every connect."""
        self._handlers[topic] = handler
        if self.connected.is_set():
            self.client.subscribe(topic, qos=1)

    def unsubscribe(self, topic: str) -> None:
        """Forget ``topic`` (and its handler)."""
        if self._handlers.pop(topic, None) is not None and self.connected.is_set():
            self.client.unsubscribe(topic)

    def on_connected(self, hook: Callable[[], None]) -> None:
        self._on_connect_hooks.append(hook)

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        self.client.connect_async(
            self.cfg.broker_host,
            self.cfg.broker_port,
            keepalive=self.cfg.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()

    def stop(self, *, graceful: bool = True) -> None:
        """Disconnect; ``graceful`` publishes ``offline`` first (the will covers crashes)."""
        self._closing = True
        if not graceful:
            # "disconnect with will message": the broker publishes our last will
            self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
            self.client.loop_stop()
            return
        if self.connected.is_set():
            info = self.client.publish(
                Topics.status(self.device), self._status("offline"), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self.connected.wait(timeout)

    # -- publishing --------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        on_ack: AckCallback | None = None,
    ) -> int:
        """Queue a publish (paho keeps it across reconnects); returns the mid.

        ``on_ack(reason_code)`` runs from the network thread on PUBACK (QoS 1).
        """
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if qos == 0:
            if on_ack is not None:
                on_ack(0)
            return info.mid
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = on_ack
        if early is not None and on_ack is not None:
            on_ack(early)
        return info.mid

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any
    ) -> None:
        code = int(getattr(rc, "value", rc) or 0)
        with self._lock:
            if mid in self._pending:
                cb = self._pending.pop(mid)
            else:
                if len(self._early) > 10000:  # acks of publishes that were never tracked
                    self._early.clear()
                self._early[mid] = code
                return
        if cb is not None:
            try:
                cb(code)
            except Exception:  # noqa: BLE001 - never raise into paho
                log.exception("ack callback failed for mid %s", mid)

    # -- callbacks ---------------------------------------------------------
    def _status(self, state: str) -> bytes:
        return encode(
            DeviceStatus(
                device=self.device,
                state=state,  # type: ignore[arg-type]
                agent_version=self._agent_version,
                hardware=self._hardware if state == "online" else None,
            )
        )

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if rc.is_failure:
            self.stats.inc("connect_refused")
            log.error("%s: broker refused connection: %s", self.device, rc)
            return
        self.stats.inc("connects")
        session_present = bool(getattr(flags, "session_present", False))
        log.info("%s: connected (session present: %s)", self.device, session_present)
        for topic in list(self._handlers):
            client.subscribe(topic, qos=1)
        self.connected.set()
        self.publish(Topics.status(self.device), self._status("online"), qos=1, retain=True)
        for hook in self._on_connect_hooks:
            try:
                hook()
            except Exception:  # noqa: BLE001
                log.exception("on-connect hook failed")

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        self.connected.clear()
        if not self._closing:
            self.stats.inc("disconnects")
            log.warning("%s: disconnected (%s); paho reconnects with backoff", self.device, rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        handler = self._handlers.get(msg.topic)
        if handler is None:
            for pattern, h in self._handlers.items():
                if mqtt.topic_matches_sub(pattern, msg.topic):
                    handler = h
                    break
        if handler is None:
            self.stats.inc("unrouted")
            return
        try:
            handler(msg)
        except Exception:  # noqa: BLE001 - a bad message never crashes the agent
            self.stats.inc("handler_errors")
            log.exception("%s: handler for %s failed", self.device, msg.topic)

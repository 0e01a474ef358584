"""Agents killed with SIGKILL (real ``citybrain-edge run`` processes): a download
resumes from the last verified chunk; hard samples waiting in the outbox are all
delivered after the restart."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.protocol import HardSampleReceipt, ReportedState, Topics, encode
from tests.conftest import REPO
from tests.edge_support import (
    ChunkServer,
    Keys,
    Mosquitto,
    Watcher,
    agent_config_file,
    build_package,
    desired,
    publish_retained,
    wait_for,
)

pytestmark = pytest.mark.integration


def spawn(config: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_agent.cli",
            "run",
            "--config",
            str(config),
            "--log-level",
            "WARNING",
        ],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait(10)


def test_download_resumes_from_last_verified_chunk(tmp_path: Path, mqtt_port: int) -> None:
    keys = Keys(tmp_path)
    archive, ref, _ = build_package(tmp_path, keys)
    dev = f"t-{uuid.uuid4().hex[:10]}"
    srv = ChunkServer(mqtt_port)
    srv.add(archive)
    srv.budget = 4  # four chunks, then the store stalls
    cfg = agent_config_file(
        tmp_path / "agent.json",
        device_id=dev,
        broker_url=f"mqtt://127.0.0.1:{mqtt_port}",
        data_dir=tmp_path / "agent",
        store_public_key=keys.path,
        chunk_size=1024,
        chunk_window=1,
        chunk_timeout_s=30,
    )
    state = tmp_path / "agent" / "staging" / f"{ref.sha256}.json"
    w = Watcher(mqtt_port, Topics.reported(dev), ReportedState)
    proc = spawn(cfg)
    try:
        publish_retained(
            mqtt_port,
            Topics.desired(dev),
            encode(desired(dev, 1, [("cam1", "tiny-cls", "1.0.0", ref)])),
        )
        wait_for(lambda: state.exists() and json.loads(state.read_text())["verified"] == 4096, 30)
        kill(proc)
        verified = json.loads(state.read_text())["verified"]
        assert verified == 4096
        before = len(srv.requests[dev])
        srv.budget = None
        srv.gate.set()
        proc = spawn(cfg)
        wait_for(lambda: w.last() and w.last().applied_revision == 1, 30)
        after = srv.requests[dev][before:]
        assert after[0] == verified  # resumed, not restarted
        assert sorted(set(after)) == list(range(verified, ref.size, 1024))
        assert not state.exists()
    finally:
        kill(proc)
        srv.close()
        w.close()
        for t in (Topics.desired(dev), Topics.reported(dev), Topics.status(dev)):
            publish_retained(mqtt_port, t, b"")


class PersistentConsumer:
    """A cloud-side subscriber with a persistent session: misses nothing across
    broker restarts, and answers each sample with a receipt as the ingest does
    (a device keeps a sample in its outbox until a receipt names it)."""

    def __init__(self, port: int, topic: str) -> None:
        self.ids: list[str] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"ingest-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        self.c.reconnect_delay_set(1, 2)
        self.topic = topic
        self.c.on_connect = lambda c, ud, fl, rc, pr: c.subscribe(topic, qos=1)
        self.c.on_message = self._on
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.c.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.c.loop_start()

    def _on(self, c: Any, ud: Any, msg: mqtt.MQTTMessage) -> None:
        sample = json.loads(msg.payload)
        with self.lock:
            self.ids.append(sample["id"])
        receipt = HardSampleReceipt(device=sample["device"], stored=[sample["id"]])
        c.publish(Topics.hard_receipt(sample["device"]), encode(receipt), qos=1)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def outbox_keys(db: Path) -> set[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0] for r in con.execute("SELECT key FROM outbox")}
    finally:
        con.close()


def test_hard_samples_survive_agent_kill_and_broker_outage(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    keys = Keys(tmp_path)
    archive, ref, _ = build_package(tmp_path, keys)
    dev = f"t-{uuid.uuid4().hex[:10]}"
    srv = ChunkServer(broker.port)
    srv.add(archive)
    consumer = PersistentConsumer(broker.port, Topics.hard(dev))
    cfg = agent_config_file(
        tmp_path / "agent.json",
        device_id=dev,
        broker_url=f"mqtt://127.0.0.1:{broker.port}",
        data_dir=tmp_path / "agent",
        store_public_key=keys.path,
        reconnect_max_s=2,
        hard={
            "selectors": [
                {
                    "kind": "low_confidence",
                    "params": {"low": 0.0, "high": 1.01},
                    "limits": {"per_minute": 100000},
                }
            ],
            "max_image_side": 64,
        },
    )
    db = tmp_path / "agent" / "outbox.sqlite"
    proc = spawn(cfg)
    try:
        publish_retained(
            broker.port,
            Topics.desired(dev),
            encode(desired(dev, 1, [("cam1", "tiny-cls", "1.0.0", ref)], fps=30)),
        )
        wait_for(lambda: len(consumer.ids) >= 5, 30)
        broker.stop()  # outage: samples pile up in the outbox
        wait_for(lambda: db.exists() and len(outbox_keys(db)) >= 20, 30)
        kill(proc)  # ... and the agent dies mid-publish
        pending = outbox_keys(db)
        assert pending
        broker.start()
        proc = spawn(cfg, CITYBRAIN_EDGE_HARD__ENABLED="false")  # no new samples: drain only
        wait_for(lambda: pending <= set(consumer.ids), 60)
        wait_for(lambda: not outbox_keys(db), 30)
    finally:
        kill(proc)
        consumer.close()
        srv.close()
        broker.stop()


def test_subscriptions_restored_after_broker_forgets_the_session(tmp_path: Path) -> None:
    from edge_agent import Agent, load_config

    broker = Mosquitto(tmp_path / "broker", persistence=False).start()
    keys = Keys(tmp_path)
    archive, ref, _ = build_package(tmp_path, keys)
    cfg = load_config(
        None,
        device_id=f"t-{uuid.uuid4().hex[:10]}",
        broker_url=f"mqtt://127.0.0.1:{broker.port}",
        data_dir=tmp_path / "agent",
        store_public_key=keys.path,
        reconnect_min_s=1,
        reconnect_max_s=1,
    )
    agent = Agent(cfg).start()
    srv = None
    try:
        assert agent.session.wait_connected(10)
        broker.stop()  # no persistence: sessions and subscriptions are gone
        wait_for(lambda: not agent.session.connected.is_set(), 10)
        broker.start()
        wait_for(lambda: agent.stats.get("connects") == 2, 20)
        srv = ChunkServer(broker.port)
        srv.add(archive)
        publish_retained(
            broker.port,
            Topics.desired(agent.device),
            encode(desired(agent.device, 1, [("cam1", "tiny-cls", "1.0.0", ref)])),
        )
        wait_for(lambda: agent.applied_revision == 1, 20)
        assert agent.stats.get("disconnects") == 1
    finally:
        agent.stop()
        if srv:
            srv.close()
        broker.stop()


def test_sigterm_stops_cleanly_and_says_offline(tmp_path: Path, mqtt_port: int) -> None:
    from edge_agent.protocol import DeviceStatus

    keys = Keys(tmp_path)
    dev = f"t-{uuid.uuid4().hex[:10]}"
    cfg = agent_config_file(
        tmp_path / "agent.json",
        device_id=dev,
        broker_url=f"mqtt://127.0.0.1:{mqtt_port}",
        data_dir=tmp_path / "agent",
        store_public_key=keys.path,
    )
    status = Watcher(mqtt_port, Topics.status(dev), DeviceStatus)
    proc = spawn(cfg)
    try:
        wait_for(lambda: status.last() and status.last().state == "online", 30)
        assert status.last().hardware is not None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        wait_for(lambda: status.last().state == "offline")
    finally:
        kill(proc)
        status.close()
        publish_retained(mqtt_port, Topics.status(dev), b"")

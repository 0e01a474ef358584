"""The fleet mirror end to end: a private Mosquitto, the real Redis, a real edge
agent running a signed detector (events + hard samples), the real hard-sample
ingest (its receipts are what hard samples/min counts), the mirror, and the
API in-process: /api/v1/devices and /api/v1/overview reflect what the device
says, live notices reach the events channel, a device that dies is offline via
its last will, hostile messages are counted, a cleared retained status removes
the device, and redeliveries are counted once."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from cloud.api.main import create_app
from cloud.core.config import Settings
from cloud.fleet import FleetMirror, FleetStore, MirrorConfig
from edge_agent.protocol import (
    DeviceStatus,
    Event,
    EventRule,
    HardSampleReceipt,
    HardwareProfile,
    Topics,
    encode,
)
from tests._api_helpers import ADMIN_TOKEN, auth
from tests.edge_support import (
    ChunkServer,
    Keys,
    Mosquitto,
    build_package,
    client,
    desired,
    publish_retained,
    wait_for,
)

pytestmark = pytest.mark.integration


class Notices:
    """Collects the JSON messages of the live-events channel."""

    def __init__(self, url: str, channel: str) -> None:
        self.r = redis.Redis.from_url(url)
        self.ps = self.r.pubsub()
        self.ps.subscribe(channel)
        self.seen: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        misses = 0
        while misses < 3:  # the subscribe confirmation also reads as None
            m = self.ps.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if m is None:
                misses += 1
            else:
                self.seen.append(json.loads(m["data"]))
        return self.seen

    def close(self) -> None:
        self.ps.close()
        self.r.close()


@pytest.fixture
def env(tmp_path: Path, redis_url: str):  # type: ignore[no-untyped-def]
    broker = Mosquitto(tmp_path / "broker", persistence=False).start()
    prefix = f"cbtest:fleet:{uuid.uuid4().hex[:10]}"
    settings = Settings(
        data_dir=tmp_path / "data",
        redis_url=redis_url,
        mqtt_url=f"mqtt://127.0.0.1:{broker.port}",
        fleet_prefix=prefix,
        events_channel=f"{prefix}:events",
        bootstrap_token=ADMIN_TOKEN,
    )
    closers: list[Any] = []
    try:
        yield settings, broker, closers
    finally:
        for close in reversed(closers):
            close()
        broker.stop()
        r = redis.Redis.from_url(redis_url)
        keys = list(r.scan_iter(f"{prefix}:*"))
        if keys:
            r.delete(*keys)
        r.close()


def _device(api: TestClient, dev: str) -> dict[str, Any] | None:
    r = api.get(f"/api/v1/devices/{dev}", headers=auth(ADMIN_TOKEN))
    return r.json() if r.status_code == 200 else None


def test_a_real_agent_shows_up_live_and_goes_offline_by_last_will(env: Any, tmp_path: Path) -> None:
    from cloud.catalog import Catalog
    from cloud.ingest import HardSampleIngest, IngestConfig
    from edge_agent import Agent, load_config

    settings, broker, closers = env
    Catalog.open(settings).close()  # migrate before the consumer starts
    ingest = HardSampleIngest(
        settings, IngestConfig(broker_url=settings.mqtt_url, client_id="fleet-test-ingest")
    )
    ingest.start()
    closers.append(ingest.stop)
    mirror = FleetMirror(
        settings,
        MirrorConfig(broker_url=settings.mqtt_url, client_id="fleet-test", batch_ms=50, tick_s=0.2),
    ).start()
    closers.append(mirror.stop)
    assert mirror.wait_connected(10) and ingest.wait_connected(10)
    notices = Notices(settings.redis_url, settings.events_channel)
    closers.append(notices.close)
    app = create_app(settings)
    api = TestClient(app)
    closers.append(app.state.catalog.close)
    h = auth(ADMIN_TOKEN)

    # hostile device messages: counted by reason, the mirror keeps going
    bad = client(broker.port)
    bad.publish(Topics.status("evil"), b"{not json", qos=1).wait_for_publish(5)
    bad.publish(Topics.status("evil"), b'{"schema": "citybrain.status/7"}', qos=1)
    other = encode(DeviceStatus(device="someone-else", state="online"))
    bad.publish(Topics.status("evil"), other, qos=1).wait_for_publish(5)
    bad.publish("cb/v1/dev/evil/events", b"", qos=1).wait_for_publish(5)

    # a real agent running a signed detector whose event rule fires and whose
    # low-confidence selector sends hard samples to the ingest
    keys = Keys(tmp_path)
    chunks = ChunkServer(broker.port)
    closers.append(chunks.close)
    rule = EventRule(event="car_seen", labels=["car"], min_score=0.5)
    archive, ref, _ = build_package(
        tmp_path,
        keys,
        algorithm="tiny-det",
        task="detect",
        boxes=[[0.1, 0.1, 0.3, 0.3, 0.9, 0], [0.5, 0.5, 0.9, 0.9, 0.4, 1]],
        event_rules=[rule],
    )
    chunks.add(archive)
    dev = f"fleet-{uuid.uuid4().hex[:8]}"
    cfg = load_config(
        None,
        device_id=dev,
        broker_url=settings.mqtt_url,
        data_dir=tmp_path / dev,
        store_public_key=keys.path,
        report_interval_s=0.5,
        hard={
            "selectors": [
                {
                    "kind": "low_confidence",
                    "params": {"low": 0.0, "high": 0.999},
                    "limits": {"per_minute": 1000},
                }
            ],
            "max_image_side": 48,
            "receipt_timeout_s": 5.0,
        },
    )
    hw = HardwareProfile(target="cpu-x86", cpu="test cpu", cores=2, memory_mb=4096)
    agent = Agent(cfg, hardware=hw).start()
    closers.append(lambda: agent.stop(graceful=False))
    publish_retained(
        broker.port,
        Topics.desired(dev),
        encode(desired(dev, 1, [("cam1", "tiny-det", "1.0.0", ref)], fps=5.0)),
    )

    def running() -> dict[str, Any] | None:
        d = _device(api, dev)
        ok = d and d["state"] == "online" and d["models"] and d["hard_per_min"] > 0
        return d if ok and d["events_per_min"] > 0 and d["last_event"] else None

    d = wait_for(running, 90, 0.3)
    assert d["agent_version"] and d["hardware"]["target"] == "cpu-x86"
    assert d["hardware"]["cores"] == 2 and d["applied_revision"] == 1
    assert [(m["algorithm"], m["version"]) for m in d["models"]] == [("tiny-det", "1.0.0")]
    assert d["streams"][0]["stream"] == "cam1" and d["last_event"]["event"] == "car_seen"
    assert d["last_seen"] is not None

    ov = api.get("/api/v1/overview", headers=h).json()
    assert ov["devices"]["online"] == 1 and ov["devices"]["offline"] == 0
    assert ov["models"] == [
        {
            "algorithm": "tiny-det",
            "version": "1.0.0",
            "devices": 1,
            "online": 1,
            "runtimes": ["onnxruntime-cpu"],
        }
    ]
    assert ov["events_per_min"] > 0 and ov["hard_per_min"] > 0
    assert sum(ov["series"]["events"]) > 0 and sum(ov["series"]["hard"]) > 0
    assert len(ov["series"]["minute"]) == 31
    assert ov["tasks_running"] == 0 and ov["watchers"] == ["fleet-test"]
    assert ov["rejected"] == {"malformed": 2, "schema": 1, "device_mismatch": 1}
    assert mirror.stats.rejected == ov["rejected"]
    listed = api.get("/api/v1/devices?state=online", headers=h).json()
    assert [x["id"] for x in listed] == [dev]
    assert api.get("/api/v1/devices?state=offline", headers=h).json() == []
    # every hard sample the catalog stored is counted
    store = FleetStore(redis.Redis.from_url(settings.redis_url), settings.fleet_prefix)
    wait_for(lambda: sum(store.series(5)["hard"]) >= ingest.stats.stored > 0, 20)

    kinds = {n["type"] for n in notices.poll()}
    assert kinds == {"device", "fleet"}
    assert any(n.get("record", {}).get("state") == "online" for n in notices.seen)

    # the device dies: the broker publishes its last will, the mirror marks it offline
    agent.stop(graceful=False)
    d = wait_for(lambda: (x := _device(api, dev)) and x["state"] == "offline" and x, 30)
    assert d["models"] and d["hardware"]["target"] == "cpu-x86"  # last known, kept
    wait_for(
        lambda: any(
            n["type"] == "device" and n.get("record", {}).get("state") == "offline"
            for n in notices.poll()
        ),
        10,
    )
    ov = api.get("/api/v1/overview", headers=h).json()
    assert ov["devices"]["online"] == 0 and ov["devices"]["offline"] == 1

    # decommissioned: its retained status is cleared -> it leaves the fleet
    publish_retained(broker.port, Topics.status(dev), b"")
    wait_for(lambda: _device(api, dev) is None, 20)
    assert api.get("/api/v1/devices", headers=h).json() == []
    assert any(n.get("removed") and n["device"] == dev for n in notices.poll())
    bad.disconnect()
    bad.loop_stop()


def test_redeliveries_and_a_second_mirror_count_each_message_once(env: Any) -> None:
    settings, broker, closers = env
    mirrors = []
    for i in range(2):
        m = FleetMirror(
            settings, MirrorConfig(broker_url=settings.mqtt_url, client_id=f"twin-{i}", batch_ms=20)
        ).start()
        closers.append(m.stop)
        assert m.wait_connected(10)
        mirrors.append(m)
    c = client(broker.port)
    dev = "cam-twin"
    ev = Event(
        id="evt-twin-0001",
        device=dev,
        stream="s",
        algorithm="a",
        model_version="1.0.0",
        event="e",
        detections=[],
        started_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
    )
    for _ in range(3):  # the same event id three times (redeliveries)
        c.publish(Topics.events(dev), encode(ev), qos=1).wait_for_publish(5)
    receipt = encode(HardSampleReceipt(device=dev, stored=["hs-twin-0001", "hs-twin-0002"]))
    c.publish(Topics.hard_receipt(dev), receipt, qos=1).wait_for_publish(5)
    c.publish(Topics.hard_receipt(dev), receipt, qos=1).wait_for_publish(5)
    wait_for(lambda: all(m.stats.applied >= 5 for m in mirrors), 20)
    store = FleetStore(redis.Redis.from_url(settings.redis_url), settings.fleet_prefix)
    s = store.series(2)
    assert sum(s["events"]) == 1 and sum(s["hard"]) == 2
    (rec,) = store.all_records()
    assert rec.id == dev and rec.state == "unknown" and rec.last_event is not None
    # clearing state of a device never heard of makes no phantom device
    c.publish(Topics.reported("ghost"), b"", qos=1, retain=True).wait_for_publish(5)
    wait_for(lambda: all(m.stats.applied >= 6 for m in mirrors), 20)
    assert store.device_ids() == [dev]

    # the CLI reads and edits the same state
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "CITYBRAIN_REDIS_URL": settings.redis_url,
        "CITYBRAIN_FLEET_PREFIX": settings.fleet_prefix,
    }
    exe = str(Path(sys.executable).parent / "citybrain")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [exe, "fleet", *args], env=env, capture_output=True, text=True, timeout=60
        )

    out = cli("devices")
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["id"] for line in out.stdout.splitlines()] == [dev]
    assert cli("devices", "--state", "online").stdout == ""
    assert cli("forget", dev).returncode == 0 and store.device_ids() == []
    gone = cli("forget", dev)
    assert gone.returncode == 2 and "no device 'cam-twin'" in gone.stderr
    c.disconnect()
    c.loop_stop()


def _redis_server(root: Path, port: int) -> Any:
    import subprocess

    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root),
         "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    from tests.conftest import port_answers

    wait_for(lambda: port_answers(port), 10)
    return proc


def test_redis_outage_loses_nothing_the_mirror_received(env: Any, tmp_path: Path) -> None:
    from tests.conftest import free_port

    settings, broker, closers = env
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    procs = [_redis_server(tmp_path / "redis", port)]

    def stop_redis() -> None:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)

    closers.append(stop_redis)
    own = settings.model_copy(update={"redis_url": url})
    mirror = FleetMirror(
        own, MirrorConfig(broker_url=own.mqtt_url, client_id="outage", batch_ms=20)
    ).start()
    closers.append(mirror.stop)
    assert mirror.wait_connected(10)
    store = FleetStore(redis.Redis.from_url(url), own.fleet_prefix)
    c = client(broker.port)
    dev = "cam-outage"
    c.publish(Topics.status(dev), encode(DeviceStatus(device=dev, state="online")), qos=1)
    wait_for(lambda: store.device_ids() == [dev], 10)

    stop_redis()  # Redis goes away; the device keeps talking
    c.publish(Topics.status(dev), encode(DeviceStatus(device=dev, state="offline")), qos=1)
    ev = Event(
        id="evt-outage-01",
        device=dev,
        stream="s",
        algorithm="a",
        model_version="1.0.0",
        event="e",
        detections=[],
        started_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
    )
    c.publish(Topics.events(dev), encode(ev), qos=1).wait_for_publish(5)
    wait_for(lambda: mirror.stats.redis_errors > 0, 20)
    procs.append(_redis_server(tmp_path / "redis", port))  # back, with its saved data

    def caught_up() -> bool:
        try:
            recs = store.all_records()
            return bool(recs) and recs[0].state == "offline" and sum(store.series(3)["events"]) == 1
        except redis.RedisError:
            return False

    wait_for(caught_up, 30, 0.2)
    assert store.all_records()[0].last_event is not None
    c.disconnect()
    c.loop_stop()


def test_fleet_watch_command_mirrors_until_sigterm(env: Any) -> None:
    import os
    import signal
    import subprocess
    import sys

    settings, broker, closers = env
    environ = {
        **os.environ,
        "CITYBRAIN_REDIS_URL": settings.redis_url,
        "CITYBRAIN_MQTT_URL": settings.mqtt_url,
        "CITYBRAIN_FLEET_PREFIX": settings.fleet_prefix,
        "CITYBRAIN_EVENTS_CHANNEL": settings.events_channel,
    }
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "citybrain"), "fleet", "watch", "--client-id", "cli-w"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    closers.append(lambda: proc.poll() is None and proc.kill())
    store = FleetStore(redis.Redis.from_url(settings.redis_url), settings.fleet_prefix)
    wait_for(lambda: store.watchers() == ["cli-w"], 60)
    publish_retained(
        broker.port,
        Topics.status("cam-cli"),
        encode(DeviceStatus(device="cam-cli", state="online")),
    )
    wait_for(lambda: store.device_ids() == ["cam-cli"], 20)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "fleet watch cli-w: stopped" in err and '"received": 1' in err

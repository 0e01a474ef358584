"""The operations pages in a real headless Chromium against a real
`citybrain serve`, a real fleet mirror, a private Mosquitto and the real
Redis: a device that comes online shows up on /overview and /devices without
a reload (SSE), with its hardware, loaded model and download progress; its
events move the chart; when it dies its last will turns the row offline."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import redis
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from cloud.core.config import Settings
from cloud.fleet import FleetMirror, MirrorConfig
from edge_agent.protocol import (
    DeviceStatus,
    Event,
    HardwareProfile,
    LoadedModel,
    ReportedState,
    StreamHealth,
    Topics,
    encode,
)
from tests._api_helpers import ADMIN_TOKEN, serve_subprocess
from tests.e2e._console import browser, login, new_page  # noqa: F401 - fixture
from tests.edge_support import Mosquitto

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


class FakeDevice:
    """Speaks the wire contract like an agent: retained status with a last
    will, retained reported state, events."""

    def __init__(self, port: int, device: str) -> None:
        self.d = device
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5
        )
        will = encode(DeviceStatus(device=device, state="offline", agent_version="9.9.9"))
        self.c.will_set(Topics.status(device), will, qos=1, retain=True)
        up = threading.Event()
        self.c.on_connect = lambda *a: up.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert up.wait(10)

    def pub(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def online(self) -> None:
        hw = HardwareProfile(
            target="gpu-sm87", cpu="arm64", cores=8, memory_mb=16384, gpu="Orin", gpu_arch="sm87"
        )
        status = DeviceStatus(device=self.d, state="online", agent_version="9.9.9", hardware=hw)
        self.pub(Topics.status(self.d), encode(status), retain=True)

    def report(self, progress: dict[str, float]) -> None:
        rep = ReportedState(
            device=self.d,
            applied_revision=4,
            models=[
                LoadedModel(
                    algorithm="street-cls",
                    version="1.0.0",
                    runtime="onnxruntime-cpu",
                    sha256="b" * 64,
                )
            ],
            streams=[StreamHealth(stream="cam-7", state="running", fps=4.0, frames=100)],
            progress=progress,
        )
        self.pub(Topics.reported(self.d), encode(rep), retain=True)

    def event(self) -> None:
        now = datetime.now(UTC)
        ev = Event(
            id=uuid.uuid4().hex,
            device=self.d,
            stream="cam-7",
            algorithm="street-cls",
            model_version="1.0.0",
            event="crowd",
            detections=[],
            started_at=now,
        )
        self.pub(Topics.events(self.d), encode(ev))

    def die(self) -> None:
        # "disconnect with will message": the broker publishes the last will
        self.c.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
        self.c.loop_stop()


def test_devices_come_online_live_and_go_offline_by_last_will(
    tmp_path: Path,
    browser: Any,  # noqa: F811
    artifacts_dir: Path,
    redis_url: str,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    broker = Mosquitto(tmp_path / "broker", persistence=False).start()
    prefix = f"cbtest:e2eops:{uuid.uuid4().hex[:10]}"
    env = {
        "CITYBRAIN_REDIS_URL": redis_url,
        "CITYBRAIN_FLEET_PREFIX": prefix,
        "CITYBRAIN_EVENTS_CHANNEL": f"{prefix}:events",
        "CITYBRAIN_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}",
    }
    settings = Settings(
        data_dir=data_dir,
        redis_url=redis_url,
        mqtt_url=env["CITYBRAIN_MQTT_URL"],
        fleet_prefix=prefix,
        events_channel=env["CITYBRAIN_EVENTS_CHANNEL"],
    )
    mirror = FleetMirror(
        settings, MirrorConfig(broker_url=settings.mqtt_url, client_id="e2e-ops", tick_s=0.3)
    ).start()
    devices: list[FakeDevice] = []
    try:
        assert mirror.wait_connected(10)
        with serve_subprocess(data_dir, extra_env=env) as base:
            page = new_page(browser)
            login(page, base, ADMIN_TOKEN, "/overview")
            page.wait_for_selector("#live[data-state=live]")
            assert page.inner_text("#t-online") == "0"
            assert "e2e-ops" in page.inner_text("#watchers")

            a = FakeDevice(broker.port, "ops-a")
            devices.append(a)
            a.online()
            a.report({"street-cls 1.1.0 download": 0.4})
            for _ in range(3):
                a.event()
            page.wait_for_function("document.getElementById('t-online').textContent === '1'")
            page.wait_for_selector('#models .verbar[data-model="street-cls@1.0.0"]')
            page.wait_for_function("document.getElementById('t-events').textContent !== '0'")
            assert page.locator("#rate-chart rect.ev").count() == 31
            page.screenshot(path=str(artifacts_dir / "console_ops_overview.png"), full_page=True)

            page.click("header nav >> text=Devices")
            page.wait_for_url(f"{base}/devices")
            page.wait_for_selector("#live[data-state=live]")
            row = page.locator("#dev-ops-a")
            assert row.get_attribute("data-state") == "online"
            assert "Orin (sm87)" in row.inner_text() and "street-cls 1.0.0" in row.inner_text()
            assert row.locator("progress").evaluate("p => p.value") == pytest.approx(0.4)

            b = FakeDevice(broker.port, "ops-b")  # comes online while the page is open
            devices.append(b)
            b.online()
            page.wait_for_selector("#dev-ops-b[data-state=online]")
            a.report({"street-cls 1.1.0 download": 0.9})
            page.wait_for_function("document.querySelector('#dev-ops-a progress').value > 0.85")
            b.die()
            page.wait_for_selector("#dev-ops-b[data-state=offline]")
            assert "Orin" in page.inner_text("#dev-ops-b")  # the will has no hardware: kept
            assert page.locator("#devices tbody tr").count() == 2
            page.screenshot(path=str(artifacts_dir / "console_ops_devices.png"), full_page=True)

            page.click("#dev-ops-a a")
            page.wait_for_url(f"{base}/devices/ops-a")
            assert "street-cls" in page.inner_text("#device")
            page.close()
    finally:
        for d in devices:
            d.c.loop_stop()
        mirror.stop()
        broker.stop()
        r = redis.Redis.from_url(redis_url)
        keys = list(r.scan_iter(f"{prefix}:*"))
        if keys:
            r.delete(*keys)
        r.close()

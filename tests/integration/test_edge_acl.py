"""deploy/mosquitto as shipped, on a private Mosquitto: a device can use only its
own subtree and read the store; it cannot publish or subscribe as another device."""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import REPO, free_port, port_answers
from tests.edge_support import wait_for

pytestmark = pytest.mark.integration

DEPLOY = REPO / "deploy" / "mosquitto"


@pytest.fixture
def broker(tmp_path: Path):
    passwd = tmp_path / "passwd"
    users = (
        ("cam-a", "pw-a"),
        ("cam-b", "pw-b"),
        ("citybrain-store", "pw-s"),
        ("citybrain-cloud", "pw-c"),
    )
    for user, pw in users:
        r = subprocess.run(
            [str(DEPLOY / "add-device.sh"), str(passwd), user, pw], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [str(DEPLOY / "add-device.sh"), str(passwd), "bad/name"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "invalid username" in r.stderr
    port = free_port()
    conf = (DEPLOY / "mosquitto.conf").read_text()
    conf = re.sub(r"(?m)^listener 1883$", f"listener {port} 127.0.0.1", conf)
    conf = conf.replace("/var/lib/mosquitto/", f"{tmp_path}/")
    conf = conf.replace("/etc/mosquitto/citybrain.passwd", str(passwd))
    conf = conf.replace("/etc/mosquitto/citybrain.acl", str(DEPLOY / "acl"))
    conf = conf.replace("log_dest stdout", f"log_dest file {tmp_path}/mosquitto.log")
    # started as root, mosquitto would drop to user "mosquitto", who cannot read tmp_path
    (tmp_path / "mosquitto.conf").write_text("user root\n" + conf)
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(tmp_path / "mosquitto.conf")], stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: port_answers(port) or proc.poll() is not None, 10)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


class Client:
    def __init__(self, port: int, user: str, pw: str, client_id: str = "") -> None:
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or user, protocol=mqtt.MQTTv5
        )
        self.c.username_pw_set(user, pw)
        self.acks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.got: list[str] = []
        self.refused: int | None = None
        self.ok = threading.Event()

        def on_connect(c, ud, fl, rc, pr):  # type: ignore[no-untyped-def]
            if rc.is_failure:
                self.refused = rc.value
            else:
                self.ok.set()

        self.c.on_connect = on_connect
        self.c.on_publish = lambda c, ud, mid, rc, pr: self.acks.__setitem__(mid, rc.value)
        self.c.on_subscribe = lambda c, ud, mid, rcs, pr: self.subacks.__setitem__(
            mid, [r.value for r in rcs]
        )
        self.c.on_message = lambda c, ud, m: self.got.append(m.topic)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def pub(self, topic: str) -> int:
        mid = self.c.publish(topic, b"x", qos=1).mid
        return wait_for(lambda: self.acks.get(mid) is not None and [self.acks[mid]], 5)[0]

    def sub(self, topic: str) -> int:
        _, mid = self.c.subscribe(topic, qos=1)
        return wait_for(lambda: self.subacks.get(mid), 5)[0]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_devices_are_confined_to_their_own_topics(broker: int) -> None:
    a = Client(broker, "cam-a", "pw-a")
    b = Client(broker, "cam-b", "pw-b")
    store = Client(broker, "citybrain-store", "pw-s")
    wrong = Client(broker, "cam-a", "not-the-password", client_id="intruder")
    try:
        assert a.ok.wait(5) and b.ok.wait(5) and store.ok.wait(5)
        wait_for(lambda: wrong.refused is not None, 5)
        assert wrong.refused in (0x86, 0x87)  # bad user name or password / not authorized

        # own subtree: allowed
        assert a.sub("cb/v1/dev/cam-a/desired") == 1
        assert a.pub("cb/v1/dev/cam-a/reported") < 0x80  # success or "no matching subscribers"
        # another device's subtree: publishing is refused; subscribing delivers nothing
        # (Mosquitto grants the SUBACK and applies the read ACL to every delivery)
        a.sub("cb/v1/dev/cam-b/desired")
        a.sub("cb/v1/dev/+/hard")
        assert a.pub("cb/v1/dev/cam-b/reported") == 0x87
        assert a.pub("cb/v1/dev/cam-b/desired") == 0x87
        # store: read, and chunk requests only
        assert a.sub("cb/v1/store/announce/+") == 1
        assert a.pub("cb/v1/store/announce/tiny") == 0x87
        assert a.pub("cb/v1/store/chunk/req") < 0x80  # success or "no matching subscribers"
        # the store may answer any device's chunk topic, nothing else there
        assert store.pub("cb/v1/dev/cam-b/chunk") < 0x80  # success or "no matching subscribers"
        assert store.pub("cb/v1/dev/cam-b/desired") == 0x87

        # b's own messages reach b's subscription, never a's
        assert b.sub("cb/v1/dev/cam-b/desired") == 1
        assert b.pub("cb/v1/dev/cam-b/desired") < 0x80
        assert b.pub("cb/v1/dev/cam-b/hard") < 0x80
        assert a.pub("cb/v1/dev/cam-a/hard") < 0x80
        wait_for(lambda: "cb/v1/dev/cam-b/desired" in b.got, 5)
        wait_for(lambda: "cb/v1/dev/cam-a/hard" in a.got, 5)  # a's wildcard works for itself
        assert a.got == ["cb/v1/dev/cam-a/hard"]
    finally:
        for c in (a, b, store, wrong):
            c.close()


def test_agent_works_under_the_deploy_acl(broker: int, tmp_path: Path) -> None:
    """The real agent with a password: status, chunk fetch via the store user,
    desired from the cloud user, reported back; all inside the shipped ACL."""
    from edge_agent import Agent, load_config
    from edge_agent.protocol import DeviceStatus, ReportedState, Topics, decode, encode
    from tests.edge_support import ChunkServer, Keys, build_package, desired, publish_retained

    keys = Keys(tmp_path)
    archive, ref, _ = build_package(tmp_path, keys)
    srv = ChunkServer(broker, username="citybrain-store", password="pw-s")
    srv.add(archive)
    cloud = Client(broker, "citybrain-cloud", "pw-c")
    seen: dict[str, bytes] = {}
    cloud.c.on_message = lambda c, ud, m: seen.__setitem__(m.topic, m.payload)
    assert cloud.ok.wait(5)
    cloud.sub("cb/v1/dev/+/reported")
    cloud.sub("cb/v1/dev/+/status")
    cfg = load_config(
        None,
        device_id="cam-a",
        broker_url=f"mqtt://127.0.0.1:{broker}",
        password="pw-a",
        data_dir=tmp_path / "agent",
        store_public_key=keys.path,
        report_interval_s=0.5,
    )
    agent = Agent(cfg).start()
    try:
        publish_retained(
            broker,
            Topics.desired("cam-a"),
            encode(desired("cam-a", 1, [("cam1", "tiny-cls", "1.0.0", ref)])),
            username="citybrain-cloud",
            password="pw-c",
        )
        wait_for(lambda: agent.applied_revision == 1, 20)
        wait_for(
            lambda: (
                Topics.reported("cam-a") in seen
                and decode(seen[Topics.reported("cam-a")], ReportedState).applied_revision == 1
            )
        )
        assert decode(seen[Topics.status("cam-a")], DeviceStatus).state == "online"
        assert agent.stats.get("rejected") == 0
    finally:
        agent.stop()
        srv.close()
        cloud.close()

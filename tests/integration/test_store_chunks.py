"""The MQTT chunk service and announcements over a real Mosquitto.

The chunk service subscribes to the one contract topic ``cb/v1/store/chunk/req``;
to keep it from answering (or being answered by) other suites' services on the
shared broker, these tests start their own ``mosquitto`` on a free port. The
retained-announcement test uses the shared broker on 1883.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import algorithm_store as st
from algorithm_store.testing import tiny_classifier_onnx, tiny_package_kwargs
from edge_agent.protocol import (
    Announcement,
    ChunkReplyHeader,
    ChunkRequest,
    Topics,
    decode,
    encode,
    verify_announcement,
)
from tests.conftest import REPO, free_port, port_answers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = tmp_path_factory.mktemp("mosq") / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 10
    while not port_answers(port):
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"mosquitto did not start: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("store")
    key = st.load_private_key(st.keygen(tmp / "keys"))
    store = st.AlgorithmStore(tmp / "store", private_key=key)
    model = tiny_classifier_onnx(tmp / "m" / "model.onnx", min_weight_bytes=40_000)
    built = st.build_package(
        model,
        id="cars",
        version="1.0.0",
        private_key=key,
        out_dir=tmp / "out",
        **tiny_package_kwargs(),
    )
    v = store.publish(built.archive, channel="stable")
    return store, key, v, built.archive.read_bytes(), tmp


class Device:
    """A device-side MQTT v5 client of the chunk protocol."""

    def __init__(self, port: int, device: str) -> None:
        self.device = device
        self.replies: queue.Queue[tuple[str, bytes | None, ChunkReplyHeader, bytes]] = queue.Queue()
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{device}", protocol=mqtt.MQTTv5
        )
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe(Topics.chunk(device), qos=1)
        time.sleep(0.2)

    def _on_message(self, c, ud, msg) -> None:
        props = msg.properties
        header = ChunkReplyHeader.from_user_properties(props.UserProperty)
        self.replies.put((msg.topic, getattr(props, "CorrelationData", None), header, msg.payload))

    def request(self, payload: bytes, response_topic: str | None, corr: bytes) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if response_topic:
            props.ResponseTopic = response_topic
        props.CorrelationData = corr
        self.c.publish(Topics.CHUNK_REQUEST, payload, qos=1, properties=props).wait_for_publish(5)

    def ask(self, sha: str, offset: int, length: int, corr: bytes | None = None):
        corr = corr or uuid.uuid4().bytes
        req = ChunkRequest(device=self.device, sha256=sha, offset=offset, length=length)
        self.request(encode(req), Topics.chunk(self.device), corr)
        topic, got_corr, header, data = self.replies.get(timeout=10)
        assert got_corr == corr and topic == Topics.chunk(self.device)
        return header, data

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def service(env, broker):
    store = env[0]
    svc = st.ChunkService(store, f"mqtt://127.0.0.1:{broker}").start()
    yield svc
    svc.stop()


def test_chunked_download_reassembles_the_signed_artifact(env, broker, service) -> None:
    store, _, v, data, _ = env
    dev = Device(broker, f"dev-{uuid.uuid4().hex[:6]}")
    try:
        got = bytearray()
        offset = 0
        while offset < v.size:
            header, chunk = dev.ask(v.sha256, offset, 16 * 1024)
            assert header.status == "ok" and header.total == v.size
            assert header.offset == offset and header.length == len(chunk)
            import hashlib

            assert header.chunk_sha256 == hashlib.sha256(chunk).hexdigest()
            got += chunk
            offset += len(chunk)
        assert bytes(got) == data
        # resume from the middle: only the missing bytes travel
        header, chunk = dev.ask(v.sha256, v.size - 100, 4096)
        assert header.length == 100 and chunk == data[-100:]
    finally:
        dev.close()


def test_response_topic_must_be_the_requesting_devices(env, broker, service) -> None:
    _, _, v, data, _ = env
    d1 = Device(broker, f"d1-{uuid.uuid4().hex[:6]}")
    d2 = Device(broker, f"d2-{uuid.uuid4().hex[:6]}")
    try:
        req = encode(ChunkRequest(device=d1.device, sha256=v.sha256, offset=0, length=1024))
        d1.request(req, Topics.chunk(d2.device), b"steal")  # reply redirected to another device
        d1.request(req, "cb/v1/somewhere/else", b"steal2")
        d1.request(req, None, b"no-response-topic")
        header, chunk = d1.ask(v.sha256, 0, 1024)  # processed after the three above
        assert header.status == "ok" and chunk == data[:1024]
        assert service.stats.rejected >= 3
        assert "response topic" in (service.stats.last_reject or "")
        time.sleep(0.3)
        assert d2.replies.empty()
        assert d1.replies.empty()
    finally:
        d1.close()
        d2.close()


def test_unpublished_and_bad_requests_are_answered_with_a_status(env, broker, service) -> None:
    _, _, v, _, _ = env
    dev = Device(broker, f"dev-{uuid.uuid4().hex[:6]}")
    try:
        header, data = dev.ask("1" * 64, 0, 10)
        assert header.status == "not_found" and data == b"" and "not published" in header.error
        header, data = dev.ask(v.sha256, v.size, 10)
        assert header.status == "bad_request" and "past the end" in header.error
        corr = b"bad-json"
        dev.request(b"{not json", Topics.chunk(dev.device), corr)
        _, got_corr, header, data = dev.replies.get(timeout=10)
        assert got_corr == corr and header.status == "bad_request" and data == b""
        too_big = encode(ChunkRequest(device=dev.device, sha256=v.sha256, offset=0, length=10))
        too_big = too_big.replace(b'"length":10', b'"length":99999999')
        dev.request(too_big, Topics.chunk(dev.device), b"big")
        _, _, header, _ = dev.replies.get(timeout=10)
        assert header.status == "bad_request" and "length" in header.error
    finally:
        dev.close()


def test_announcements_are_retained_and_verify(env, mqtt_port) -> None:
    store, key, v, _, tmp = env
    algo = f"ann-{uuid.uuid4().hex[:8]}"
    s2 = st.AlgorithmStore(tmp / "store2", private_key=key)
    announcer = st.MqttAnnouncer(f"mqtt://127.0.0.1:{mqtt_port}")
    s2.announcer = announcer
    model = tiny_classifier_onnx(tmp / "m2" / "model.onnx")
    built = st.build_package(
        model,
        id=algo,
        version="1.0.0",
        private_key=key,
        out_dir=tmp / "out2",
        **tiny_package_kwargs(),
    )
    try:
        s2.publish(built.archive, channel="canary")
        assert s2.last_announce_error is None
        got: queue.Queue[bytes] = queue.Queue()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.on_message = lambda c_, ud, msg: got.put(msg.payload) if msg.retain else None
        c.connect("127.0.0.1", mqtt_port)
        c.loop_start()
        c.subscribe(Topics.announce(algo), qos=1)
        ann = decode(got.get(timeout=10), Announcement)
        c.loop_stop()
        c.disconnect()
        verify_announcement(ann, st.public_key_raw(key))
        assert ann.channels == {"canary": "1.0.0"}
        assert ann.artifacts["1.0.0"].sha256 == s2.version(algo, "1.0.0").sha256
    finally:
        announcer.client.publish(Topics.announce(algo), b"", qos=1, retain=True).wait_for_publish(5)
        announcer.close()


def test_serve_chunks_cli_process(env, broker, tmp_path: Path) -> None:
    store, key, v, data, tmp = env
    data_dir = tmp_path / "cb"
    (data_dir / "store").mkdir(parents=True)
    # the process's store: the same index and blobs, and the key at <store_dir>/key
    for p in store.root.iterdir():
        dest = data_dir / "store" / p.name
        if p.is_dir():
            shutil.copytree(p, dest)
        else:
            shutil.copy2(p, dest)
    shutil.copy2(tmp / "keys" / "key", data_dir / "store" / "key")
    shutil.copy2(tmp / "keys" / "key.pub", data_dir / "store" / "key.pub")
    env_vars = {**os.environ, "CITYBRAIN_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from cloud.cli import main; main()",
            "store",
            "serve-chunks",
            "--mqtt-url",
            f"mqtt://127.0.0.1:{broker}",
        ],
        cwd=REPO,
        env=env_vars,
        stderr=subprocess.PIPE,
        text=True,
    )
    dev = None
    try:
        line = proc.stderr.readline()
        assert "serving chunks" in line, line
        dev = Device(broker, f"cli-{uuid.uuid4().hex[:6]}")
        header, chunk = dev.ask(v.sha256, 10, 1000)
        assert header.status == "ok" and chunk == data[10:1010]
        # on start the process re-announces every algorithm (fresh expires_at)
        got: queue.Queue[bytes] = queue.Queue()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.on_message = lambda c_, ud, msg: got.put(msg.payload)
        c.connect("127.0.0.1", broker)
        c.loop_start()
        c.subscribe(Topics.announce("cars"), qos=1)
        ann = decode(got.get(timeout=10), Announcement)
        c.loop_stop()
        c.disconnect()
        verify_announcement(ann, st.public_key_raw(key))
        assert ann.channels == {"stable": "1.0.0"}
    finally:
        if dev:
            dev.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_shared_subscription_splits_requests_without_duplicates(env, broker) -> None:
    store, _, v, data, _ = env
    url = f"mqtt://127.0.0.1:{broker}"
    a = st.ChunkService(store, url, share_group="store").start()
    b = st.ChunkService(store, url, share_group="store").start()
    dev = Device(broker, f"sh-{uuid.uuid4().hex[:6]}")
    try:
        n = 12
        for i in range(n):
            header, chunk = dev.ask(v.sha256, i * 100, 100)
            assert header.status == "ok" and chunk == data[i * 100 : (i + 1) * 100]
        time.sleep(0.3)
        assert dev.replies.empty()  # exactly one reply per request
        assert a.stats.served + b.stats.served == n
    finally:
        dev.close()
        a.stop()
        b.stop()

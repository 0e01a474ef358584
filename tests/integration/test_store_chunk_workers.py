"""Chunk serving at scale: worker processes on one MQTT v5 shared subscription,
and chunk-size limits (the store's own and the broker's Maximum Packet Size),
over private Mosquitto brokers."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import algorithm_store as st
from algorithm_store.testing import tiny_classifier_onnx, tiny_package_kwargs
from tests.conftest import REPO, free_port, port_answers
from tests.integration.test_store_chunks import Device

pytestmark = pytest.mark.integration


def _mosquitto(conf_dir: Path, extra: str = "") -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = conf_dir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n{extra}")
    proc = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 10
    while not port_answers(port):
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"mosquitto did not start: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    return proc, port


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    proc, port = _mosquitto(tmp_path_factory.mktemp("mosq"))
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def small_broker(tmp_path_factory: pytest.TempPathFactory):
    """A broker that takes no packet over 300,000 bytes."""
    proc, port = _mosquitto(tmp_path_factory.mktemp("mosq-small"), "max_packet_size 300000\n")
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("store")
    key = st.load_private_key(st.keygen(tmp / "keys"))
    store = st.AlgorithmStore(tmp / "store", private_key=key)
    model = tiny_classifier_onnx(tmp / "m" / "model.onnx", min_weight_bytes=700_000)
    built = st.build_package(
        model,
        id="big",
        version="1.0.0",
        private_key=key,
        out_dir=tmp / "out",
        profile=False,
        **tiny_package_kwargs(),
    )
    v = store.publish(built.archive, channel="stable")
    assert v.size > 600_000
    return store, v, built.archive.read_bytes(), tmp


def _wait(pred, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_workers_on_a_shared_subscription_serve_every_request_exactly_once(env, broker) -> None:
    store, v, data, _ = env
    workers = st.ChunkWorkers(store.root, f"mqtt://127.0.0.1:{broker}", workers=3).start()
    dev = Device(broker, f"w-{uuid.uuid4().hex[:6]}")
    try:
        assert len(set(workers.pids)) == 3
        n, size = 30, 1000
        for i in range(n):  # asked one after another: a duplicate would stay queued
            header, chunk = dev.ask(v.sha256, i * size, size)
            assert header.status == "ok" and chunk == data[i * size : (i + 1) * size]
        assert _wait(lambda: workers.stats.served == n), workers.per_worker()
        time.sleep(0.5)
        assert dev.replies.empty()  # no second answer to any request
        assert workers.stats.served == n and workers.stats.bytes_sent == n * size
        served = [s.served for s in workers.per_worker()]
        assert sum(1 for s in served if s) >= 2, served  # the broker spread them
    finally:
        dev.close()
        workers.stop()
    assert not any(p.is_alive() for p in workers._procs)


def test_a_dead_worker_is_started_again(env, broker) -> None:
    store, v, data, _ = env
    workers = st.ChunkWorkers(store.root, f"mqtt://127.0.0.1:{broker}", workers=2).start()
    dev = Device(broker, f"r-{uuid.uuid4().hex[:6]}")
    try:
        victim = workers.pids[0]
        os.kill(victim, signal.SIGKILL)
        assert _wait(lambda: not workers._procs[0].is_alive())
        assert workers.revive() == 1 and workers.restarts == 1
        assert victim not in workers.pids and len(workers.pids) == 2
        for i in range(6):
            header, chunk = dev.ask(v.sha256, i * 10, 10)
            assert header.status == "ok" and chunk == data[i * 10 : i * 10 + 10]
    finally:
        dev.close()
        workers.stop()


def test_a_chunk_over_the_stores_limit_is_refused_with_the_reason(env, broker) -> None:
    store, v, data, _ = env
    svc = st.ChunkService(store, f"mqtt://127.0.0.1:{broker}", max_chunk=4096).start()
    dev = Device(broker, f"l-{uuid.uuid4().hex[:6]}")
    try:
        assert svc.chunk_limit == 4096
        header, chunk = dev.ask(v.sha256, 0, 8192)
        assert header.status == "bad_request" and chunk == b""
        assert "8192 bytes is over the limit of 4096" in header.error
        assert "this store's chunk limit" in header.error
        assert "ask for at most 4096" in header.error
        header, chunk = dev.ask(v.sha256, 0, 4096)
        assert header.status == "ok" and chunk == data[:4096]
        # what is actually sent counts: a long request for the last 100 bytes is fine
        header, chunk = dev.ask(v.sha256, v.size - 100, 8192)
        assert header.status == "ok" and chunk == data[-100:]
    finally:
        dev.close()
        svc.stop()


def test_the_brokers_maximum_packet_size_limits_chunks(env, small_broker) -> None:
    store, v, data, _ = env
    svc = st.ChunkService(store, f"mqtt://127.0.0.1:{small_broker}").start()
    dev = Device(small_broker, f"b-{uuid.uuid4().hex[:6]}")
    try:
        assert st._mqtt.broker_max_packet(svc.client) == 300_000
        assert 290_000 < svc.chunk_limit < 300_000
        header, chunk = dev.ask(v.sha256, 0, 512 * 1024)
        assert header.status == "bad_request" and chunk == b""
        assert "maximum packet size is 300000 bytes" in header.error
        header, chunk = dev.ask(v.sha256, 0, 250_000)  # under the limit: served
        assert header.status == "ok" and chunk == data[:250_000]
        assert svc.client.is_connected()  # the broker never saw an oversized reply
    finally:
        dev.close()
        svc.stop()


def test_bad_worker_and_chunk_settings_are_refused(env, broker) -> None:
    store, *_ = env
    url = f"mqtt://127.0.0.1:{broker}"
    with pytest.raises(st.StoreError, match="workers 0"):
        st.ChunkWorkers(store.root, url, workers=0)
    with pytest.raises(st.StoreError, match="max_chunk"):
        st.ChunkWorkers(store.root, url, workers=2, max_chunk=8 * 1024 * 1024)
    with pytest.raises(st.StoreError, match="max_chunk"):
        st.ChunkService(store, url, max_chunk=0)
    with pytest.raises(st.StoreError, match="mqtt://host:port"):
        st.ChunkWorkers(store.root, "http://127.0.0.1:1", workers=2)
    unreachable = st.ChunkWorkers(store.root, f"mqtt://127.0.0.1:{free_port()}", workers=2)
    with pytest.raises(st.StoreError, match="did not start"):
        unreachable.start(timeout=10)


def test_serve_chunks_cli_with_workers(env, broker, tmp_path: Path) -> None:
    store, v, data, tmp = env
    data_dir = tmp_path / "cb"
    shutil.copytree(store.root, data_dir / "store")
    for name in ("key", "key.pub"):  # the process's key: <store_dir>/key
        shutil.copy2(tmp / "keys" / name, data_dir / "store" / name)
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
            "--workers",
            "2",
            "--max-chunk-kib",
            "64",
        ],
        cwd=REPO,
        env=env_vars,
        stderr=subprocess.PIPE,
        text=True,
    )
    dev = None
    try:
        line = proc.stderr.readline()
        assert "serving chunks" in line and "2 workers" in line, line
        dev = Device(broker, f"cw-{uuid.uuid4().hex[:6]}")
        for i in range(4):
            header, chunk = dev.ask(v.sha256, i * 65536, 65536)
            assert header.status == "ok" and chunk == data[i * 65536 : (i + 1) * 65536]
        header, _ = dev.ask(v.sha256, 0, 65537)
        assert header.status == "bad_request" and "limit of 65536" in header.error
    finally:
        if dev:
            dev.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert "4 chunks served" in proc.stderr.read()


def test_large_chunks_arrive_intact(env, broker) -> None:
    """Chunks of 64 KiB and more leave paho as header + payload (sendmsg)."""
    store, v, data, _ = env
    svc = st.ChunkService(store, f"mqtt://127.0.0.1:{broker}").start()
    dev = Device(broker, f"g-{uuid.uuid4().hex[:6]}")
    try:
        for offset, length in ((0, 65536), (12345, 600_000), (v.size - 70_000, 100_000)):
            header, chunk = dev.ask(v.sha256, offset, length)
            assert header.status == "ok" and chunk == data[offset : offset + length]
            assert header.chunk_sha256 == hashlib.sha256(chunk).hexdigest()
    finally:
        dev.close()
        svc.stop()

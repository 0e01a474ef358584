"""The edge agent against the real Mosquitto on 1883: desired -> reported with
signed packages over MQTT chunks and HTTP Range, idempotency, supersession,
hot swap without a gap, fault-injected updates that must leave the old model
running, hostile messages, a bad source, a cache too small."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_agent import Agent, load_config
from edge_agent.protocol import (
    ArtifactRef,
    DesiredState,
    DeviceStatus,
    Event,
    EventRule,
    ReportedState,
    Topics,
    encode,
)
from tests.edge_support import (
    ArtifactHttpServer,
    ChunkServer,
    Keys,
    Watcher,
    build_package,
    desired,
    publish_retained,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Path, mqtt_port: int) -> Any:
    """Keys, a chunk server, and a factory of agents (cleaned up, retained topics cleared)."""
    keys = Keys(tmp_path)
    srv = ChunkServer(mqtt_port)
    agents: list[Agent] = []
    watchers: list[Watcher] = []
    devices: list[str] = []

    class Env:
        port = mqtt_port
        root = tmp_path

        def __init__(self) -> None:
            self.keys = keys
            self.srv = srv

        def agent(self, hardware: Any = None, **over: Any) -> Agent:
            dev = over.pop("device_id", None) or f"t-{uuid.uuid4().hex[:10]}"
            devices.append(dev)
            settings: dict[str, Any] = {
                "broker_url": f"mqtt://127.0.0.1:{mqtt_port}",
                "data_dir": tmp_path / dev,
                "store_public_key": keys.path,
                "chunk_size": 2048,
                "chunk_timeout_s": 2.0,
                "report_interval_s": 0.5,
                "retry_failed_s": 120,
            }
            settings.update(over)
            cfg = load_config(None, device_id=dev, **settings)
            a = Agent(cfg, hardware=hardware)
            a.start()
            agents.append(a)
            assert a.session.wait_connected(10)
            return a

        def package(self, **kw: Any) -> Any:
            archive, ref, manifest = build_package(tmp_path, keys, **kw)
            srv.add(archive)
            return archive, ref, manifest

        def watch(self, topic: str, model: Any) -> Watcher:
            w = Watcher(mqtt_port, topic, model)
            watchers.append(w)
            return w

        def send(self, d: DesiredState) -> None:
            publish_retained(mqtt_port, Topics.desired(d.device), encode(d))

    yield Env()
    for a in agents:
        a.stop()
    for w in watchers:
        w.close()
    srv.close()
    for dev in devices:
        for t in (Topics.desired(dev), Topics.reported(dev), Topics.status(dev)):
            publish_retained(mqtt_port, t, b"")


def reported(env: Any, agent: Agent) -> Watcher:
    return env.watch(Topics.reported(agent.device), ReportedState)


def applied(w: Watcher, rev: int, version: str | None = None) -> Any:
    def ok() -> Any:
        r = w.last()
        if r is None or r.applied_revision != rev:
            return None
        if version and [m.version for m in r.models] != [version]:
            return None
        return r

    return wait_for(ok, 30)


def test_desired_to_reported_over_mqtt_chunks_idempotent(env: Any) -> None:
    _, ref, _ = env.package(version="1.0.0")
    agent = env.agent()
    status = env.watch(Topics.status(agent.device), DeviceStatus)
    wait_for(lambda: status.last() and status.last().state == "online")
    assert status.last().hardware is not None and status.last().hardware.cores > 0
    w = reported(env, agent)
    d1 = desired(agent.device, 1, [("cam1", "tiny-cls", "1.0.0", ref)])
    env.send(d1)
    r = applied(w, 1, "1.0.0")
    assert r.last_error is None
    assert r.models[0].sha256 == ref.sha256 and r.models[0].runtime == "onnxruntime-cpu"
    # every chunk came through MQTT, about once: bytes fetched ~ artifact size
    assert agent.stats.get("bytes_fetched") == ref.size
    assert len(env.srv.requests[agent.device]) == -(-ref.size // 2048)
    wait_for(lambda: w.last().streams and w.last().streams[0].frames > 0)
    assert w.last().streams[0].state == "running"

    # the same revision twice, and an older one: nothing happens
    env.send(d1)
    env.send(desired(agent.device, 0, [("cam1", "tiny-cls", "1.0.0", ref)]))
    wait_for(lambda: agent.stats.get("desired_ignored") >= 2)
    assert agent.stats.get("applies_ok") == 1
    assert agent.stats.get("artifacts_fetched") == 1
    assert len(env.srv.requests[agent.device]) == -(-ref.size // 2048)


def test_hot_swap_keeps_inferring_during_update(env: Any) -> None:
    _, ref1, _ = env.package(version="1.0.0")
    _, ref2, _ = env.package(version="2.0.0", bias=0.5)
    agent = env.agent()
    seen: list[str] = []
    orig = agent._on_result
    agent._on_result = lambda wk, f, m, res, sh: (
        seen.append(m.manifest.version),
        orig(wk, f, m, res, sh),
    )  # type: ignore[method-assign]
    w = reported(env, agent)
    env.send(desired(agent.device, 1, [("cam1", "tiny-cls", "1.0.0", ref1)]))
    applied(w, 1, "1.0.0")
    wait_for(lambda: len(seen) > 3)
    env.srv.budget = 2  # the store serves two chunks of v2, then stalls mid-download
    env.send(desired(agent.device, 2, [("cam1", "tiny-cls", "2.0.0", ref2)]))
    wait_for(lambda: agent.inflight is not None)
    r = wait_for(lambda: w.last().progress and w.last())  # progress is reported
    assert 0 < r.progress["tiny-cls 2.0.0 download"] < 1
    during = len(seen)
    wait_for(lambda: len(seen) > during + 5)  # v1 keeps running while v2 downloads
    assert set(seen[during:]) == {"1.0.0"}
    env.srv.budget = None
    env.srv.gate.set()
    applied(w, 2, "2.0.0")
    assert w.last().progress == {}
    wait_for(lambda: seen[-1] == "2.0.0")
    switch = seen.index("2.0.0")
    assert set(seen[:switch]) == {"1.0.0"} and set(seen[switch:]) == {"2.0.0"}
    assert agent.stats.get("hot_swaps") == 1
    assert agent.streams["cam1"].errors == 0
    assert agent.cache.pinned() == {ref2.sha256}


def test_newer_revision_supersedes_an_apply_in_flight(env: Any) -> None:
    _, ref2, _ = env.package(version="2.0.0")
    _, ref3, _ = env.package(version="3.0.0", bias=0.3)
    agent = env.agent()
    w = reported(env, agent)
    env.srv.gate.clear()
    env.send(desired(agent.device, 2, [("cam1", "tiny-cls", "2.0.0", ref2)]))
    wait_for(lambda: agent.inflight is not None and agent.inflight.revision == 2)
    env.send(desired(agent.device, 3, [("cam1", "tiny-cls", "3.0.0", ref3)]))
    env.srv.gate.set()
    r = applied(w, 3, "3.0.0")
    assert r.last_error is None
    assert agent.stats.get("applies_superseded") == 1
    assert not agent.cache.has(ref2.sha256)  # never finished, never loaded
    assert not list((agent.data_dir / "staging").iterdir())  # its partial is cleaned up


FAULTS = [
    ("corrupt_chunk", "failed"),
    ("archive_mismatch", "sha256/size mismatch"),
    ("bad_signature", "signed by key"),
    ("unlisted_file", "not listed in the signed manifest"),
    ("golden_fail", "golden check failed"),
    ("unknown_artifact", "not found in the store"),
    ("wrong_version", "assignment wants"),
]


def test_faulty_updates_keep_the_old_model_running(env: Any) -> None:
    _, ref1, _ = env.package(version="1.0.0")
    agent = env.agent(chunk_retries=1)
    w = reported(env, agent)
    env.send(desired(agent.device, 1, [("cam1", "tiny-cls", "1.0.0", ref1)]))
    applied(w, 1, "1.0.0")
    (env.root / "other").mkdir()
    other = Keys(env.root / "other")
    for rev, (fault, expect) in enumerate(FAULTS, start=2):
        version = f"1.0.{rev}"
        kw: dict[str, Any] = {"version": version, "bias": 0.1 * rev}
        if fault == "bad_signature":
            kw["sign_with"] = other
        if fault == "unlisted_file":
            kw["extra_file"] = True
        if fault == "golden_fail":
            kw["golden_shift"] = 0.5
        archive, ref, _ = build_package(env.root, env.keys, **kw)
        if fault != "unknown_artifact":
            env.srv.add(archive)
        if fault == "corrupt_chunk":
            env.srv.corrupt[ref.sha256] = {2048}
        if fault == "archive_mismatch":  # consistent chunks, wrong bytes
            data = bytearray(archive.read_bytes())
            data[100] ^= 0xFF
            env.srv.add(bytes(data), sha=ref.sha256)
        want = "9.9.9" if fault == "wrong_version" else version
        frames = agent.streams["cam1"].frames
        env.send(desired(agent.device, rev, [("cam1", "tiny-cls", want, ref)]))

        def failed(rev: int = rev) -> Any:
            r = w.last()
            return r if r.last_error and r.last_error.startswith(f"revision {rev}:") else None

        r = wait_for(failed, 30)
        assert expect in r.last_error, (fault, r.last_error)
        assert r.applied_revision == 1
        assert [(m.version, m.sha256) for m in r.models] == [("1.0.0", ref1.sha256)]
        assert not agent.cache.has(ref.sha256), fault  # unverified bytes never kept
        wait_for(lambda f=frames: agent.streams["cam1"].frames > f + 2)  # still inferring
        assert agent.streams["cam1"].model.manifest.version == "1.0.0"
    assert agent.stats.get("chunk_corrupt") >= 1
    assert agent.cache.entries() == [ref1.sha256]
    assert not list((agent.data_dir / "staging").glob("*.x"))


def test_hostile_messages_are_rejected_and_counted(env: Any) -> None:
    agent = env.agent()
    w = reported(env, agent)
    topic = Topics.desired(agent.device)
    dup = ArtifactRef(sha256="0" * 64, size=1, signature="x")
    for payload in (
        b"{not json",
        b"[1,2]",
        json.dumps(
            {"schema": "citybrain.desired/9", "device": agent.device, "revision": 5}
        ).encode(),
        json.dumps(
            {"schema": "citybrain.desired/1", "device": agent.device, "revision": "x"}
        ).encode(),
        encode(desired("someone-else", 7, [])),
        encode(
            desired(agent.device, 9, [("cam1", "a", "1.0.0", dup), ("cam1", "b", "1.0.0", dup)])
        ),
    ):
        publish_retained(env.port, topic, payload)
    wait_for(lambda: w.last() and w.last().rejected == 6)
    assert "rejected desired state" in w.last().last_error
    assert agent.applied_revision == -1
    # a chunk reply nobody asked for
    publish_retained(env.port, Topics.chunk(agent.device), b"junk")
    wait_for(lambda: agent.stats.get("chunk_uncorrelated") == 1)
    publish_retained(env.port, Topics.chunk(agent.device), b"")
    # still alive and applying
    _, ref, _ = env.package(version="1.0.0")
    env.send(desired(agent.device, 10, [("cam1", "tiny-cls", "1.0.0", ref)]))
    applied(w, 10, "1.0.0")


def test_unopenable_source_is_reported_and_retried(env: Any) -> None:
    _, ref, _ = env.package(version="1.0.0")
    agent = env.agent(source_retry_max_s=1.0)
    w = reported(env, agent)
    env.send(
        desired(
            agent.device,
            1,
            [("cam1", "tiny-cls", "1.0.0", ref)],
            source=str(env.root / "missing.avi"),
        )
    )
    applied(w, 1, "1.0.0")

    def errored() -> Any:
        s = w.last().streams
        return s and s[0].state == "error" and "no such file" in (s[0].error or "")

    wait_for(errored)
    retries = agent.streams["cam1"]
    # the file appears: the stream recovers by itself
    import shutil

    from tests.edge_support import VIDEO

    shutil.copy(VIDEO, env.root / "missing.avi")
    wait_for(lambda: retries.state == "running" and retries.frames > 0, 15)


def test_cache_too_small_is_a_clear_error(env: Any) -> None:
    _, ref1, _ = env.package(version="1.0.0")
    agent = env.agent(cache_max_bytes=2 * ref1.size + 1000)
    w = reported(env, agent)
    env.send(desired(agent.device, 1, [("cam1", "tiny-cls", "1.0.0", ref1)]))
    applied(w, 1, "1.0.0")
    _, ref2, _ = env.package(version="2.0.0", bias=1.0)
    # v1 is in use (pinned): v2 cannot fit beside it
    env.send(
        desired(
            agent.device,
            2,
            [("cam1", "tiny-cls", "1.0.0", ref1), ("cam2", "tiny-cls", "2.0.0", ref2)],
        )
    )
    r = wait_for(lambda: w.last().last_error and "revision 2" in w.last().last_error and w.last())
    assert "cache_max_bytes" in r.last_error
    assert r.applied_revision == 1 and agent.cache.has(ref1.sha256)
    assert agent.streams["cam1"].state == "running"


def test_http_range_fetch_resumes_after_a_cut(env: Any) -> None:
    archive, ref, _ = env.package(version="1.0.0")
    http = ArtifactHttpServer()
    try:
        http.artifacts[ref.sha256] = archive.read_bytes()
        http.cut_after = 3000
        agent = env.agent(fetch_mode="http", http_base_url=http.url, retry_failed_s=0.5)
        w = reported(env, agent)
        env.send(desired(agent.device, 1, [("cam1", "tiny-cls", "1.0.0", ref)]))
        applied(w, 1, "1.0.0")
        assert http.ranges[0] is None
        assert any(r and r.startswith("bytes=") and r != "bytes=0-" for r in http.ranges[1:])
        assert agent.stats.get("fetch_resumed") == 1
    finally:
        http.close()


def test_event_rules_fire_on_events_topic(env: Any) -> None:
    rule = EventRule(
        event="car_in_zone",
        labels=["car"],
        min_score=0.5,
        zone=[(0, 0), (0.5, 0), (0.5, 0.5), (0, 0.5)],
    )
    far = EventRule(event="car_far", labels=["car"], zone=[(0.6, 0.6), (1, 0.6), (1, 1)])
    _, ref, _ = env.package(
        algorithm="tiny-det",
        task="detect",
        boxes=[
            [0.1, 0.1, 0.3, 0.3, 0.9, 0],
            [0.12, 0.1, 0.3, 0.3, 0.8, 0],
            [0.5, 0.5, 0.9, 0.9, 0.2, 1],
        ],
        event_rules=[rule, far],
    )
    agent = env.agent()
    events = env.watch(Topics.events(agent.device), Event)
    env.send(desired(agent.device, 1, [("cam1", "tiny-det", "1.0.0", ref)]))
    ev = wait_for(events.last)
    assert ev.event == "car_in_zone" and ev.stream == "cam1" and ev.algorithm == "tiny-det"
    assert len(ev.detections) == 1  # NMS merged the overlapping pair
    threading.Event().wait(0.5)
    assert {e.event for e in events.messages} == {"car_in_zone"}  # fires once, not per frame


def test_expired_desired_state_keeps_running_but_reports_stale(env: Any) -> None:
    from datetime import UTC, datetime, timedelta

    _, ref, _ = env.package(version="1.0.0")
    agent = env.agent()
    w = reported(env, agent)
    d = desired(agent.device, 1, [("cam1", "tiny-cls", "1.0.0", ref)])
    d.expires_at = datetime.now(UTC) - timedelta(minutes=1)
    env.send(d)
    r = applied(w, 1, "1.0.0")
    wait_for(lambda: (w.last().last_error or "").startswith("stale: desired revision 1 expired"))
    assert r.models[0].version == "1.0.0"
    wait_for(lambda: agent.streams["cam1"].frames > 0)


def test_gpu_device_without_tensorrt_keeps_onnx_runtime(env: Any, caplog: Any) -> None:
    from edge_agent._runtime import tensorrt_available
    from edge_agent.protocol import HardwareProfile

    if tensorrt_available() is None:
        pytest.skip("TensorRT is usable here: covered by test_edge_tensorrt.py")
    _, ref, _ = env.package(version="1.0.0")
    gpu = HardwareProfile(target="gpu-sm87", gpu_arch="sm87", tensorrt=None, cores=2)
    agent = env.agent(hardware=gpu)
    w = reported(env, agent)
    caplog.set_level("INFO", logger="edge_agent.agent")
    env.send(desired(agent.device, 1, [("cam1", "tiny-cls", "1.0.0", ref)]))
    r = applied(w, 1, "1.0.0")
    assert r.models[0].runtime.startswith("onnxruntime")
    wait_for(lambda: agent.stats.get("tensorrt_skipped") == 1)
    assert any("TensorRT is not installed" in m for m in caplog.messages)
    assert r.last_error is None

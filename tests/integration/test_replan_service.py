"""The re-planning service against the real Mosquitto: a graph + policies in a real
SQLite catalog, a store with a signed package, device statuses over MQTT, retained
desired states back; a device going offline moves its cameras; flapping is bounded."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

import algorithm_store as st
import knowledge_graph as kg
import scheduler as sch
from algorithm_store.testing import tiny_classifier_onnx, tiny_package_kwargs
from edge_agent.protocol import DesiredState, DeviceStatus, Topics, decode, encode

pytestmark = pytest.mark.integration


class Watcher:
    """Collects desired states of our devices; publishes their statuses."""

    def __init__(self, port: int, devices: list[str]) -> None:
        self.devices = devices
        self.desired: dict[str, list[DesiredState]] = {d: [] for d in devices}
        self.cond = threading.Condition()
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"test-replan-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.c.on_message = self._on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.on_connect = lambda c, *a: c.subscribe([(Topics.desired(d), 1) for d in devices])
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert subscribed.wait(10), "the broker did not confirm the subscription"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if not msg.payload:
            return
        s = decode(msg.payload, DesiredState)
        with self.cond:
            self.desired[s.device].append(s)
            self.cond.notify_all()

    def status(self, device: str, state: str) -> None:
        info = self.c.publish(
            Topics.status(device),
            encode(DeviceStatus(device=device, state=state)),  # type: ignore[arg-type]
            qos=1,
            retain=True,
        )
        info.wait_for_publish(5)
        assert info.is_published()

    def wait(self, pred: Any, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = end - time.monotonic()
                if left <= 0:
                    import faulthandler
                    import sys

                    faulthandler.dump_traceback(sys.stderr)
                assert left > 0, f"timed out; desired so far: {self.summary()} {self.info()}"
                self.cond.wait(left)

    info: Any = staticmethod(lambda: "")

    def last(self, d: str) -> DesiredState:
        return self.desired[d][-1]

    def summary(self) -> dict[str, list[tuple[int, list[str]]]]:
        return {
            d: [(s.revision, [a.stream for a in s.assignments]) for s in v]
            for d, v in self.desired.items()
        }

    def cleanup(self) -> None:
        for d in self.devices:
            for topic in (Topics.status(d), Topics.desired(d)):
                self.c.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        self.c.loop_stop()
        self.c.disconnect()


def _store(tmp_path: Path, algo: str) -> st.AlgorithmStore:
    key = st.load_private_key(st.keygen(tmp_path / "keys"))
    store = st.AlgorithmStore(tmp_path / "store", private_key=key)
    model = tiny_classifier_onnx(tmp_path / "src" / "model.onnx")
    pkg = st.build_package(
        model,
        id=algo,
        version="1.0.0",
        private_key=key,
        out_dir=tmp_path / "out",
        **tiny_package_kwargs(scenes=["street"], detects=["car_event"]),
    )
    store.publish(pkg.archive, channel="stable")
    return store


def _graph(engine: Any, algo: str, dev: dict[str, str], cams: dict[str, str]) -> None:
    g = kg.CityGraph()
    g.add_scene("street")
    g.add_event("car_event")
    g.add_algorithm(
        algo,
        version="1.0.0",
        detects=["car_event"],
        scenes=["street"],
        fps=2,
        cost={"cpu-x86": {"ms_per_frame": 20, "mem_mb": 50}},
    )
    for c in cams.values():
        g.add_camera(c, zone="city/a", scenes=["street"], source=f"/data/{c}.avi")
    shared = [cams["1"], cams["2"]]
    g.add_device(dev["a"], target="cpu-x86", ms_per_s=1000, mem_mb=500, streams=4, reaches=shared)
    g.add_device(dev["b"], target="cpu-x86", ms_per_s=1000, mem_mb=500, streams=4, reaches=shared)
    g.add_device(
        dev["c"], target="cpu-x86", ms_per_s=1000, mem_mb=500, streams=4, reaches=[cams["3"]]
    )
    g.add_policy(kg.Policy(id="watch-cars", zone="city", events=["car_event"], priority=3))
    kg.save(g, engine)


def test_service_closes_the_loop_over_mqtt(data_dir: Path, mqtt_port: int, tmp_path: Path) -> None:
    from cloud.catalog.db import make_engine, migrate
    from cloud.core.config import get_settings

    tag = uuid.uuid4().hex[:8]
    algo = f"cars-{tag}"
    dev = {k: f"rp-{tag}-{k}" for k in "abc"}
    cams = {k: f"rpcam-{tag}-{k}" for k in "123"}
    engine = make_engine(get_settings().database_url)
    migrate(engine)
    _graph(engine, algo, dev, cams)
    store = _store(tmp_path, algo)
    w = Watcher(mqtt_port, list(dev.values()))
    svc = sch.ReplanService(
        engine=engine,
        store=store,
        mqtt_url=f"mqtt://127.0.0.1:{mqtt_port}",
        state_path=data_dir / "replan-state.json",
        window_s=0.3,
        max_delay_s=2.0,
        offline_grace_s=1.0,
        device_min_interval_s=1.0,
        poll_s=0.5,
        time_limit=2.0,
    )
    w.info = lambda: (
        [(r.reasons, r.devices, r.error, r.skipped) for r in svc.history],
        svc.rejected,
        svc.received,
        svc._connected.is_set(),
        [t.name for t in threading.enumerate()],
        svc.debouncer.devices,
        svc._graph_devices,
    )
    try:
        svc.start()
        for d in dev.values():
            w.status(d, "online")
        w.wait(lambda: all(w.desired[d] for d in dev.values()))
        w.wait(
            lambda: (
                sorted(a.stream for d in dev.values() for a in w.last(d).assignments)
                == sorted(cams.values())
            )
        )
        ref = store.artifact_ref(algo, "1.0.0")
        first = {d: w.last(d) for d in dev.values()}
        for s in first.values():
            for a in s.assignments:
                assert (a.algorithm, a.version, a.artifact.sha256) == (algo, "1.0.0", ref.sha256)
                assert a.source == f"/data/{a.stream}.avi" and a.fps == 2
        assert [a.stream for a in first[dev["c"]].assignments] == [cams["3"]]
        busy = next(d for d in (dev["a"], dev["b"]) if first[d].assignments)
        other = dev["b"] if busy == dev["a"] else dev["a"]
        n_c = len(w.desired[dev["c"]])

        # the device holding c1, c2 goes offline: after the grace they move to the other
        w.status(busy, "offline")
        w.wait(lambda: w.last(busy).revision > first[busy].revision)
        w.wait(lambda: w.last(other).revision > first[other].revision)
        assert w.last(busy).assignments == []
        assert sorted(a.stream for a in w.last(other).assignments) == [cams["1"], cams["2"]]
        assert w.last(other).revision == first[other].revision + 1
        # the unaffected device got nothing new: same revision, no republish
        assert (
            len(w.desired[dev["c"]]) == n_c
            and w.last(dev["c"]).revision == first[dev["c"]].revision
        )
        assert svc.state.revisions()[dev["c"]] == first[dev["c"]].revision

        # flapping: 10 online/offline cycles within a second on two devices
        time.sleep(1.2)  # past the per-device interval of the last change
        before = svc.replans
        for _ in range(10):
            for d in (dev["c"], busy):
                w.status(d, "offline")
                w.status(d, "online")
            time.sleep(0.05)
        w.status(busy, "offline")  # busy ends offline, c ends online
        time.sleep(4.0)  # grace + interval + debounce, several times over
        assert svc.replans - before <= 3, [r.reasons for r in svc.history[-6:]]
        assert w.last(dev["c"]).revision == first[dev["c"]].revision  # c never lost its camera
        assert w.last(busy).assignments == []
        assert all(r.error is None for r in svc.history), [r.error for r in svc.history]
    finally:
        svc.stop()
        w.cleanup()
        engine.dispose()


def _broker(tmp_path: Path, port: int) -> Any:
    import subprocess

    from tests.conftest import port_answers

    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
    )
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    end = time.monotonic() + 10
    while not port_answers(port):
        assert time.monotonic() < end and proc.poll() is None, "mosquitto did not start"
        time.sleep(0.05)
    return proc


def test_a_broker_restart_gets_the_desired_states_back(data_dir: Path, tmp_path: Path) -> None:
    """The broker loses its retained messages (no persistence): on reconnect the
    service republishes every saved desired state as it was (same revision)."""
    from cloud.catalog.db import make_engine, migrate
    from cloud.core.config import get_settings
    from tests.conftest import free_port

    port = free_port()
    broker = _broker(tmp_path, port)
    tag = uuid.uuid4().hex[:8]
    algo = f"cars-{tag}"
    dev = {k: f"rb-{tag}-{k}" for k in "abc"}
    cams = {k: f"rbcam-{tag}-{k}" for k in "123"}
    engine = make_engine(get_settings().database_url)
    migrate(engine)
    _graph(engine, algo, dev, cams)
    svc = sch.ReplanService(
        engine=engine,
        store=_store(tmp_path, algo),
        mqtt_url=f"mqtt://127.0.0.1:{port}",
        state_path=data_dir / "replan-state.json",
        window_s=0.2,
        max_delay_s=1.0,
        poll_s=0.5,
        time_limit=1.0,
    )
    w = Watcher(port, list(dev.values()))
    try:
        svc.start()
        for d in dev.values():
            w.status(d, "online")
        w.wait(
            lambda: (
                sum(len(w.last(d).assignments) for d in dev.values() if w.desired[d]) == 3
                and all(w.desired[d] for d in dev.values())
            )
        )
        before = {d: w.last(d) for d in dev.values()}
        w.c.loop_stop()
        w.c.disconnect()
        broker.terminate()
        broker.wait(10)
        broker = _broker(tmp_path, port)  # empty: no retained message survived
        fresh = Watcher(port, list(dev.values()))
        fresh.wait(lambda: all(fresh.desired[d] for d in dev.values()), timeout=30)
        for d in dev.values():
            assert fresh.last(d).revision == before[d].revision
            assert fresh.last(d).assignments == before[d].assignments
        fresh.cleanup()
    finally:
        svc.stop()
        broker.terminate()
        broker.wait(10)
        engine.dispose()


def test_announced_algorithms_enter_the_graph_and_get_placed(
    data_dir: Path, mqtt_port: int, tmp_path: Path
) -> None:
    """Issue 7: algorithms enter the graph from their store manifests automatically. The
    graph knows scenes, events, cameras, devices and a policy but no algorithm; publishing
    one to ``stable`` (announced over MQTT) enters it and places it; a newer version on
    the channel updates the graph and the desired states."""
    from cloud.catalog.db import make_engine, migrate
    from cloud.core.config import get_settings

    tag = uuid.uuid4().hex[:8]
    algo, dev, cam = f"autocars-{tag}", f"rpa-{tag}", f"rpacam-{tag}"
    engine = make_engine(get_settings().database_url)
    migrate(engine)
    g = kg.CityGraph()
    g.add_scene("street")
    g.add_event("car_event")
    g.add_camera(cam, zone="city/a", scenes=["street"], source=f"/data/{cam}.avi")
    g.add_device(dev, target="cpu-x86", ms_per_s=1000, mem_mb=500, streams=4, reaches=[cam])
    g.add_policy(kg.Policy(id="watch-cars", zone="city", events=["car_event"], priority=3))
    kg.save(g, engine)
    key = st.load_private_key(st.keygen(tmp_path / "keys"))
    announcer = st.MqttAnnouncer(f"mqtt://127.0.0.1:{mqtt_port}")
    store = st.AlgorithmStore(tmp_path / "store", private_key=key, announcer=announcer)

    def publish(version: str) -> None:
        pkg = st.build_package(
            tiny_classifier_onnx(tmp_path / "src" / f"{version}.onnx"),
            id=algo,
            version=version,
            private_key=key,
            out_dir=tmp_path / "out",
            fps=2,
            **tiny_package_kwargs(scenes=["street"], detects=["car_event"]),
        )
        store.publish(pkg.archive, channel="stable")

    w = Watcher(mqtt_port, [dev])
    svc = sch.ReplanService(
        engine=engine,
        store=store,
        mqtt_url=f"mqtt://127.0.0.1:{mqtt_port}",
        state_path=data_dir / "replan-state.json",
        window_s=0.3,
        max_delay_s=2.0,
        device_min_interval_s=0.5,
        poll_s=0.5,
        time_limit=2.0,
    )
    try:
        svc.start()
        w.status(dev, "online")
        publish("1.0.0")
        w.wait(lambda: bool(w.desired[dev]) and bool(w.last(dev).assignments))
        a = w.last(dev).assignments[0]
        assert (a.stream, a.algorithm, a.version) == (cam, algo, "1.0.0")
        node = kg.load(engine).node(kg.NodeType.ALGORITHM, algo)
        assert node["version"] == "1.0.0" and node["fps"] == 2
        publish("1.1.0")
        w.wait(lambda: w.last(dev).assignments[0].version == "1.1.0")
        assert kg.load(engine).node(kg.NodeType.ALGORITHM, algo)["version"] == "1.1.0"
        assert all(r.error is None for r in svc.history), [r.error for r in svc.history]
    finally:
        svc.stop()
        w.cleanup()
        announcer.close()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.connect("127.0.0.1", mqtt_port)
        c.loop_start()
        c.publish(Topics.announce(algo), b"", qos=1, retain=True).wait_for_publish(5)
        c.loop_stop()
        c.disconnect()
        engine.dispose()

"""``citybrain schedule run`` as a real process against the real Mosquitto: desired
states on device status, a policy change in the catalog re-plans, SIGTERM stops it
cleanly, and a restart keeps revisions (no new revision for an unchanged plan)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import algorithm_store as st
import knowledge_graph as kg
from algorithm_store.testing import tiny_classifier_onnx, tiny_package_kwargs
from tests.conftest import REPO
from tests.integration.test_replan_service import Watcher

pytestmark = pytest.mark.integration

RUN = [
    "schedule", "run", "--debounce", "0.2", "--max-delay", "1", "--offline-grace", "0.5",
    "--device-interval", "0.5", "--poll", "0.3", "--time-limit", "1",
]  # fmt: skip


def _start(port: int) -> subprocess.Popen:
    code = f"import sys; from cloud.cli import main; sys.argv = ['citybrain', *{RUN!r}]; main()"
    env = {**os.environ, "CITYBRAIN_MQTT_URL": f"mqtt://127.0.0.1:{port}"}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
    )


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def test_run_command_replans_on_policy_change_and_restarts_monotonic(
    data_dir: Path, mqtt_port: int, tmp_path: Path
) -> None:
    from cloud.catalog.db import make_engine, migrate
    from cloud.core.config import get_settings

    tag = uuid.uuid4().hex[:8]
    algo, d1, d2, cam = f"cars-{tag}", f"rpc-{tag}-1", f"rpc-{tag}-2", f"rpccam-{tag}"
    key = st.load_private_key(st.keygen(get_settings().store_dir))
    pkg = st.build_package(
        tiny_classifier_onnx(tmp_path / "model.onnx"),
        id=algo,
        version="1.0.0",
        private_key=key,
        out_dir=tmp_path / "out",
        **tiny_package_kwargs(scenes=["street"], detects=["car_event"]),
    )
    st.AlgorithmStore(get_settings().store_dir, private_key=key).publish(
        pkg.archive, channel="stable"
    )
    engine = make_engine(get_settings().database_url)
    migrate(engine)
    g = kg.CityGraph()
    g.add_scene("street")
    g.add_event("car_event")
    g.add_algorithm(
        algo, version="1.0.0", detects=["car_event"], scenes=["street"], fps=2,
        cost={"cpu-x86": {"ms_per_frame": 20, "mem_mb": 50}},
    )  # fmt: skip
    g.add_camera(cam, zone="city/a", scenes=["street"], source="/data/vtest.avi")
    for d in (d1, d2):
        g.add_device(d, target="cpu-x86", ms_per_s=1000, mem_mb=500, streams=2, reaches=[cam])
    g.add_policy(kg.Policy(id="cars", zone="city", events=["car_event"], priority=1))
    kg.save(g, engine)

    w = Watcher(mqtt_port, [d1, d2])
    proc = _start(mqtt_port)
    try:
        for d in (d1, d2):
            w.status(d, "online")
        w.wait(lambda: any(w.desired[d] and w.last(d).assignments for d in (d1, d2)))
        holder = d1 if w.desired[d1] and w.last(d1).assignments else d2
        rev = w.last(holder).revision
        (a,) = w.last(holder).assignments
        assert (a.stream, a.algorithm, a.source) == (cam, algo, "/data/vtest.avi")

        # the operator removes the policy: the next poll re-plans, the camera is dropped
        g = kg.load(engine)
        g.remove_policy("cars")
        kg.save(g, engine)
        w.wait(lambda: w.last(holder).revision == rev + 1)
        assert w.last(holder).assignments == []
        err = _stop(proc)
        assert proc.returncode == 0, err
        assert "stopped after" in err
        assert (data_dir / "replan-state.json").is_file()

        # restart: saved states are republished as they were, no new revision
        n = {d: len(w.desired[d]) for d in (d1, d2)}
        proc = _start(mqtt_port)
        w.wait(lambda: all(len(w.desired[d]) > n[d] for d in (d1, d2)))
        time.sleep(1.5)  # startup re-plan + a few polls
        assert w.last(holder).revision == rev + 1
        assert all(s.revision <= rev + 1 for d in (d1, d2) for s in w.desired[d])
        err = _stop(proc)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        w.cleanup()
        engine.dispose()

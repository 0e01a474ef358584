"""The fleet simulator: ``citybrain fleet simulate`` runs N real agents against
the real broker; killed agents leave their last will, restarted ones catch up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from edge_agent import Fleet
from edge_agent.protocol import DeviceStatus, Topics, encode
from tests.conftest import REPO
from tests.edge_support import (
    VIDEO,
    ChunkServer,
    Keys,
    Watcher,
    build_package,
    desired,
    publish_retained,
    wait_for,
)

pytestmark = pytest.mark.integration

CITYBRAIN = str(Path(sys.executable).with_name("citybrain"))


def _clear(port: int, devices: list[str]) -> None:
    for d in devices:
        for t in (Topics.desired(d), Topics.reported(d), Topics.status(d)):
            publish_retained(port, t, b"")


def test_fleet_simulate_cli_applies_desired_on_every_device(
    tmp_path: Path, mqtt_port: int, data_dir: Path
) -> None:
    keys = Keys(tmp_path)
    archive, ref, _ = build_package(tmp_path, keys)
    srv = ChunkServer(mqtt_port)
    srv.add(archive)
    prefix = f"f{uuid.uuid4().hex[:6]}"
    devices = [f"{prefix}-{i:04d}" for i in range(3)]
    for d in devices:
        # the desired source is a camera the simulator does not have: --source replaces it
        publish_retained(
            mqtt_port,
            Topics.desired(d),
            encode(
                desired(
                    d, 1, [("cam1", "tiny-cls", "1.0.0", ref)], source="rtsp://cam.invalid/1", fps=5
                )
            ),
        )
    try:
        r = subprocess.run(
            [
                CITYBRAIN,
                "fleet",
                "simulate",
                "--devices",
                "3",
                "--broker",
                f"mqtt://127.0.0.1:{mqtt_port}",
                "--source",
                str(VIDEO),
                "--store-key",
                str(keys.path),
                "--data-dir",
                str(tmp_path / "fleet"),
                "--prefix",
                prefix,
                "--duration",
                "90",
                "--until-applied",
                "1",
                "--interval",
                "0.5",
                "--per-process",
                "2",  # 3 agents over 2 child processes
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env={**os.environ},
        )
        assert r.returncode == 0, r.stderr[-2000:]
        final = json.loads(r.stdout.strip().splitlines()[-1])
        assert final["final"] and final["devices"] == 3
        assert final["applied_revisions"] == {"1": 3}
        assert final["errors"] == 0
        assert final["counters"]["bytes_fetched"] == 3 * ref.size
    finally:
        srv.close()
        _clear(mqtt_port, devices)


def test_fleet_simulate_cli_rejects_bad_input(tmp_path: Path, data_dir: Path) -> None:
    r = subprocess.run(
        [
            CITYBRAIN,
            "fleet",
            "simulate",
            "--devices",
            "2",
            "--source",
            str(VIDEO),
            "--store-key",
            str(tmp_path / "nope.pub"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "nope.pub" in r.stderr


def test_killed_agent_leaves_last_will_and_catches_up_after_restart(
    tmp_path: Path, mqtt_port: int
) -> None:
    keys = Keys(tmp_path)
    archive, ref, _ = build_package(tmp_path, keys)
    srv = ChunkServer(mqtt_port)
    srv.add(archive)
    prefix = f"k{uuid.uuid4().hex[:6]}"
    fleet = Fleet(
        2,
        broker_url=f"mqtt://127.0.0.1:{mqtt_port}",
        data_dir=tmp_path / "fleet",
        store_public_key=keys.path,
        source=str(VIDEO),
        prefix=prefix,
        report_interval_s=0.5,
    ).start()
    victim = fleet.device_id(1)
    status = Watcher(mqtt_port, Topics.status(victim), DeviceStatus)
    try:
        wait_for(lambda: status.last() and status.last().state == "online")
        fleet.kill(victim)
        wait_for(lambda: status.last().state == "offline")
        # a new revision while it is down: retained, picked up on restart
        for d in (fleet.device_id(0), victim):
            publish_retained(
                mqtt_port,
                Topics.desired(d),
                encode(
                    desired(
                        d,
                        4,
                        [("cam1", "tiny-cls", "1.0.0", ref)],
                        fps=5,
                        source="rtsp://cam.invalid/x",
                    )
                ),
            )
        wait_for(lambda: fleet.agents[fleet.device_id(0)].applied_revision == 4)
        agent = fleet.restart(victim)
        wait_for(lambda: status.last().state == "online")
        wait_for(lambda: agent.applied_revision == 4)
        assert fleet.summary()["applied_revisions"] == {4: 2}
        # the desired source is replaced by the simulator's --source
        wait_for(lambda: agent.streams["cam1"].frames > 0)
        assert agent.streams["cam1"].source == str(VIDEO)
    finally:
        fleet.stop()
        status.close()
        srv.close()
        _clear(mqtt_port, [fleet.device_id(0), victim])

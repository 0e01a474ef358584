"""The real ``citybrain`` executable: graph + policy commands persist in the catalog
between processes, export-instance writes the scheduling format, bad input exits 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration
EXAMPLE = REPO.parent / "shared" / "schemas" / "schedule-instance.example.json"
CITYBRAIN = str(Path(sys.executable).with_name("citybrain"))


def _run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CITYBRAIN_DATA_DIR": str(data_dir)}
    env.pop("CITYBRAIN_DB_URL", None)
    return subprocess.run(
        [CITYBRAIN, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_processes_share_the_stored_graph(tmp_path: Path) -> None:
    data = tmp_path / "cb"
    r = _run(data, "graph", "import-instance", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    r = _run(
        data,
        "policy",
        "add",
        "--zone",
        "longgang/*",
        "--event",
        "cargo_carried",
        "--priority",
        "2",
        "--hours",
        "22-6",
        "--id",
        "night",
        "--pin",
        "cam-003:lobby_cargo",
        "--exclude",
        "manhole_missing:device=edge-02",
    )
    assert r.returncode == 0, r.stderr
    out, ext = tmp_path / "instance.json", tmp_path / "ext.json"
    r = _run(
        data,
        "graph",
        "export-instance",
        "--out",
        str(out),
        "--at",
        "2026-11-30T23:00",
        "--extensions",
        str(ext),
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    example = json.loads(EXAMPLE.read_text())
    assert {k: doc[k] for k in example if k != "policies"} == {
        k: example[k] for k in example if k != "policies"
    }
    assert doc["policies"] == example["policies"] + [
        {"zone": "longgang/*", "events": ["cargo_carried"], "priority": 2}
    ]
    assert "extensions" not in doc
    assert json.loads(ext.read_text())["citybrain.pins/1"] == [
        {"camera": "cam-003", "algorithm": "lobby_cargo", "priority": 2, "policy": "night"}
    ]
    # the scheduler reads what the graph exports
    plan = tmp_path / "plan.json"
    r = _run(data, "schedule", "solve", "--instance", str(out), "--out", str(plan))
    assert r.returncode == 0, r.stderr
    assert json.loads(plan.read_text())["schema"] == "citybrain.schedule-plan/1"
    r = _run(
        data,
        "graph",
        "explain",
        "cam-002",
        "drowning",
        "--json",
        "--at",
        "2026-11-30T23:00",
        "--plan",
        str(plan),
    )
    assert r.returncode == 0, r.stderr
    why = json.loads(r.stdout)
    assert why["usable_devices"] == ["edge-01"]
    assert (why["reason"], why["device"]) == ("placed", "edge-01"), why
    r = _run(data, "graph", "add-camera", "cam-001", "--zone", "x", "--scene", "street")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: camera 'cam-001' already exists (camera)"

"""`citybrain demo --headless --size small` as a real subprocess: every narrated
stage succeeds (real Redis/Mosquitto — the configured ones, or started by the
demo —, a real `citybrain serve`, 3 real edge agents, real ingest), and a second
run on the same data dir resumes without duplicating datasets, dataset
versions, models or store versions. Bad input (API port taken, data dir not
writable, unknown size) exits 2 with one line on stderr."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

_SCRIPT = Path(sys.executable).parent / "citybrain"
CITYBRAIN = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from cloud.cli import main; main()"]
)
STAGE_KEYS = "abcdefghijk"


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    drop = ("CITYBRAIN_DATA_DIR", "CITYBRAIN_DB_URL", "CITYBRAIN_STORE_KEY_FILE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    p = subprocess.Popen(
        [*CITYBRAIN, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGTERM)  # the demo stops what it started
        try:
            out, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        pytest.fail(f"demo did not finish within {timeout}s:\n{out[-3000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _counts(data_dir: Path) -> dict[str, object]:
    con = sqlite3.connect(data_dir / "catalog.db")
    try:
        q = {
            "datasets": "select count(*) from datasets",
            "dataset_versions": "select count(*) from dataset_versions",
            "models": "select count(*) from models",
            "samples": "select count(*) from samples",
        }
        out: dict[str, object] = {k: con.execute(v).fetchone()[0] for k, v in q.items()}
        out["model_versions"] = sorted(r[0] for r in con.execute("select version from models"))
    finally:
        con.close()
    from algorithm_store import AlgorithmStore

    store = AlgorithmStore(data_dir / "store")
    out["store_versions"] = sorted(v.version for v in store.versions("cone-watch"))
    return out


@pytest.mark.timeout(2700)
def test_demo_headless_runs_every_stage_then_resumes(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    args = ["demo", "--headless", "--size", "small", "--data-dir", str(data_dir)]
    first = _run([*args, "--port", str(free_port())], timeout=1500)
    out = first.stdout
    # round 2 must be better, or the demo says why not (issue 8): a gate refusal on the
    # frozen test split is an honest outcome (exit 1, v2 unpublished, devices stay on v1)
    refused = first.returncode == 1 and "gate REFUSED cone-watch 1.1.0" in out
    assert first.returncode == 0 or refused, f"{out[-4000:]}\n{first.stderr[-3000:]}"
    for key in STAGE_KEYS[:-1] if refused else STAGE_KEYS:
        assert f"stage {key}: " in out and f"stage {key}: done in" in out, f"stage {key}:\n{out}"
    assert "ORACLE (simulated annotator, source=oracle) labeled" in out
    assert "hard samples stored in the field_hard pool" in out
    before = _counts(data_dir)
    assert before["model_versions"] == ["1.0.0", "1.1.0"]
    if refused:
        assert "v2 is not published; the devices stay on v1" in out
        assert before["store_versions"] == ["1.0.0"]
    else:
        assert "gate passed" in out
        assert "all 3 agents now run cone-watch 1.1.0" in out
        assert "console: http://127.0.0.1:" in out
        assert "DEMO OK" in out
        result = json.loads((data_dir / "demo" / "result.json").read_text())
        assert result["ok"] is True
        assert 0.0 <= result["round1_accuracy"] <= 1.0 and 0.0 <= result["round2_accuracy"] <= 1.0
        assert before["store_versions"] == ["1.0.0", "1.1.0"]

    second = _run([*args, "--port", str(free_port())], timeout=900)
    assert second.returncode == first.returncode, (
        f"{second.stdout[-4000:]}\n{second.stderr[-3000:]}"
    )
    assert "(resumed)" in second.stdout
    if not refused:
        assert "all 3 agents now run cone-watch 1.1.0" in second.stdout
    after = _counts(data_dir)
    # the agents keep sending field hard cases while they run: new samples may arrive,
    # but no dataset, dataset version, model or store version is created twice
    assert after.pop("samples") >= before.pop("samples")
    assert after == before


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, f"{proc.stdout}\n{proc.stderr}"
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "stage a" not in proc.stdout
    return lines[0]


def test_demo_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        proc = _run(
            ["demo", "--headless", "--data-dir", str(tmp_path / "d"), "--port", str(port)], 120
        )
    line = _one_error_line(proc)
    assert f"port {port} is taken" in line and "--port" in line


def test_demo_refuses_a_data_dir_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    bad = blocker / "data"  # a folder under a regular file: unwritable even for root
    proc = _run(["demo", "--headless", "--data-dir", str(bad), "--port", str(free_port())], 120)
    line = _one_error_line(proc)
    assert str(bad) in line and "not writable" in line


def test_demo_refuses_an_unknown_size(tmp_path: Path) -> None:
    proc = _run(["demo", "--headless", "--size", "huge", "--data-dir", str(tmp_path)], 120)
    assert "--size" in _one_error_line(proc)

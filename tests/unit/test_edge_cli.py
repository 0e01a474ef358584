"""``citybrain-edge``: --help, hardware, run with a bad config (exit 2, one line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge_agent.cli import main
from edge_agent.protocol import HardwareProfile
from tests.conftest import REPO


def test_help_lists_commands(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "citybrain edge agent" in out and "run" in out and "hardware" in out


def test_hardware_prints_a_profile(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["hardware"]) == 0
    hw = HardwareProfile.model_validate(json.loads(capsys.readouterr().out))
    assert hw.cores > 0 and hw.target


def test_run_with_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    f = tmp_path / "edge.toml"
    f.write_text('device_id = "has space"\n')
    r = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(f)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "device_id" in r.stderr and str(f) in r.stderr
    f.write_text('device_id = "ok"\nstore_public_key = "/nope.pub"\n')
    r = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(f)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert r.returncode == 2 and "store_public_key" in r.stderr

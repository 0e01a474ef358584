"""``citybrain fleet watch / devices / forget``: hostile options and a missing
Redis end with exit code 2 and one line on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).parent / "citybrain")


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "CITYBRAIN_REDIS_URL": "redis://127.0.0.1:1/0", **env}
    return subprocess.run(
        [EXE, "fleet", *args], env=full, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["watch", "--broker", "http://example.org"], "broker URL must be mqtt://"),
        (["watch"], "Redis at redis://127.0.0.1:1/0 cannot be reached"),
        (["devices"], "cannot be reached"),
        (["devices", "--state", "sleepy"], "--state must be online, offline or unknown"),
        (["forget", "cam-1"], "cannot be reached"),
    ],
)
def test_bad_input_and_missing_redis_exit_2(args: list[str], message: str) -> None:
    r = run(*args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and r.stderr.startswith("error: ")
    assert len(r.stderr.strip().splitlines()) == 1

"""`pip install .[edge]` alone is enough to import every edge_agent module and
start `citybrain-edge --help`, and it brings no torch/fastapi/ray/sqlalchemy/redis."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_edge_extra_installs_alone(tmp_path: Path) -> None:
    env_dir = tmp_path / "edge-venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    r = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", f"{REPO}[edge]"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    code = (
        "import importlib, pkgutil, edge_agent\n"
        "mods=[m.name for m in pkgutil.walk_packages(edge_agent.__path__, 'edge_agent.')]\n"
        "[importlib.import_module(m) for m in mods]\n"
        "import importlib.util as u\n"
        "bad=[n for n in ('torch','fastapi','ray','sqlalchemy','redis','typer') if u.find_spec(n)]\n"
        "assert not bad, bad\n"
        "print('modules', len(mods))\n"
    )
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run(
        [str(env_dir / "bin" / "citybrain-edge"), "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "citybrain edge agent" in r.stdout
    assert sys.prefix != str(env_dir)

"""0 lost, 0 duplicated: 10 publishers x 200 hard samples through a real
Mosquitto (persistence on, own port and directory) that is SIGKILLed and
restarted 3 times, into a real ``citybrain ingest`` process that is itself
SIGKILLed once. Same harness as ``benchmarks/ingest_bench.py`` (which runs
50 x 200 with 5 broker restarts)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _harness() -> Any:
    if "ingest_bench" in sys.modules:
        return sys.modules["ingest_bench"]
    spec = importlib.util.spec_from_file_location(
        "ingest_bench", REPO / "benchmarks" / "ingest_bench.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ingest_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_broker_and_consumer_killed_nothing_lost_nothing_duplicated(tmp_path: Path) -> None:
    bench = _harness()
    r = bench.run(10, 200, 3, workdir=tmp_path, ingest_kills=1, timeout_s=240, log=print)
    tail = r.pop("ingest_log_tail")
    assert r["broker_restarts"] == 3
    assert r["publisher_errors"] == [], r
    assert r["missing"] == [] and r["lost"] == 0, (r, tail)
    assert r["dup_keys"] == [] and r["duplicated"] == 0, r
    assert r["stored"] == 2000 and r["unexpected"] == 0

"""Structured logs: ``citybrain-edge run --log-format json`` (or
CITYBRAIN_EDGE_LOG_FORMAT) and the cloud services (``citybrain --log-format
json``, or CITYBRAIN_LOG_FORMAT) write one JSON object per line with ts, level,
logger, msg (and the device on the edge) plus extra fields."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cloud.core import _logging as cloud_logging
from edge_agent._logging import JsonFormatter, configure_logging
from tests.conftest import REPO, free_port, port_answers
from tests.edge_support import Keys, wait_for


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    out = [json.loads(ln) for ln in lines]  # every line is one JSON object
    for o in out:
        assert {"ts", "level", "logger", "msg"} <= o.keys(), o
        datetime.fromisoformat(o["ts"])
    return out


def test_formatter_adds_fields_extras_and_tracebacks() -> None:
    f = JsonFormatter(device="cam-box-1")
    log = logging.getLogger("edge_agent.test")
    try:
        raise ValueError("boom")
    except ValueError:
        rec = log.makeRecord(
            "edge_agent.test",
            logging.ERROR,
            __file__,
            1,
            "apply %s failed",
            ("rev 3",),
            sys.exc_info(),
            extra={"revision": 3, "path": Path("/x"), "msg_id": "a\nb"},
        )
    o = json.loads(f.format(rec))
    assert o["msg"] == "apply rev 3 failed" and o["level"] == "ERROR"
    assert o["logger"] == "edge_agent.test" and o["device"] == "cam-box-1"
    assert o["revision"] == 3 and o["path"] == "/x" and o["msg_id"] == "a\nb"
    assert "ValueError: boom" in o["exc"]
    assert "\n" not in f.format(rec)  # one line, whatever the message holds


def test_edge_configure_logging_json(capfd: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("json", "DEBUG", device="d-7")
        logging.getLogger("edge_agent.x").debug("hello %d", 5, extra={"stream": "cam-1"})
        (o,) = json_lines(capfd.readouterr().err)
        assert o["msg"] == "hello 5" and o["device"] == "d-7" and o["stream"] == "cam-1"
        with pytest.raises(ValueError):
            configure_logging("xml")  # type: ignore[arg-type]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


@pytest.mark.parametrize("how", ["flag", "env"])
def test_citybrain_edge_run_logs_json_lines(tmp_path: Path, how: str) -> None:
    keys = Keys(tmp_path)
    port = free_port()
    cfg = tmp_path / "edge.json"
    cfg.write_text(
        json.dumps(
            {
                "device_id": "jl-1",
                "broker_url": f"mqtt://127.0.0.1:{free_port()}",  # unreachable: logs say so
                "store_public_key": str(keys.path),
                "data_dir": str(tmp_path / "data"),
                "metrics_port": port,
            }
        )
    )
    argv = [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(cfg)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYBRAIN_EDGE_")}
    if how == "flag":
        argv += ["--log-format", "json"]
    else:
        env["CITYBRAIN_EDGE_LOG_FORMAT"] = "json"
    p = subprocess.Popen(argv, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: port_answers(port) or p.poll() is not None, 60)
        assert p.poll() is None, p.stderr.read() if p.stderr else ""
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    lines = json_lines(err)
    assert all(o["device"] == "jl-1" for o in lines)
    assert any(o["logger"] == "edge_agent.metrics" and str(port) in o["msg"] for o in lines)


def test_cloud_log_format_option_setting_and_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cloud.cli import build_app
    from cloud.core.config import get_settings

    monkeypatch.setattr(cloud_logging, "_cli_format", [None])
    monkeypatch.setenv("CITYBRAIN_LOG_FORMAT", "json")
    get_settings.cache_clear()
    try:
        assert cloud_logging.resolve_format() == "json"
        monkeypatch.setenv("CITYBRAIN_LOG_FORMAT", "text")
        get_settings.cache_clear()
        assert cloud_logging.resolve_format() == "text"
        app = build_app()
        r = CliRunner().invoke(app, ["--log-format", "json", "version"])
        assert r.exit_code == 0, r.output
        assert cloud_logging.resolve_format() == "json"  # the option beats the setting
        r = CliRunner().invoke(app, ["--log-format", "xml", "version"])
        assert r.exit_code == 2 and "--log-format" in r.output
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_citybrain_worker_logs_json_lines(tmp_path: Path, redis_url: str, how: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYBRAIN_")}
    env.update(
        CITYBRAIN_DATA_DIR=str(tmp_path),
        CITYBRAIN_REDIS_URL=redis_url,
        CITYBRAIN_JOB_PREFIX=f"test-jl-{uuid.uuid4().hex[:8]}",
    )
    argv = [str(Path(sys.executable).with_name("citybrain"))]
    if how == "flag":
        argv += ["--log-format", "json"]
    else:
        env["CITYBRAIN_LOG_FORMAT"] = "json"
    argv += ["worker", "--idle-exit", "0.5", "--name", "jl-worker"]
    r = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    # the worker's own status lines are plain CLI output; the log records are JSON
    records = json_lines("\n".join(ln for ln in r.stderr.splitlines() if ln.startswith("{")))
    assert any(o["logger"] == "citybrain.worker" and "jl-worker" in o["msg"] for o in records)
    assert not any(ln.startswith("20") and " INFO " in ln for ln in r.stderr.splitlines())

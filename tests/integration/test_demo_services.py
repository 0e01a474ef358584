"""The demo's preflight helpers: when the configured Redis / Mosquitto do not
answer it starts real ones from PATH on free ports and stops them (process
groups) afterwards; a missing binary is a clear PreflightError (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.demo import PreflightError
from cloud.demo._infra import (
    Services,
    _need_binary,
    check_data_dir,
    ensure_mosquitto,
    ensure_redis,
    mqtt_answers,
    redis_answers,
)
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_starts_and_stops_redis_and_mosquitto_when_none_answers(tmp_path: Path) -> None:
    services = Services()
    dead = free_port()
    try:
        r_url, r_started = ensure_redis(f"redis://127.0.0.1:{dead}/0", services, tmp_path)
        m_url, m_started = ensure_mosquitto(f"mqtt://127.0.0.1:{dead}", services, tmp_path)
        assert r_started and m_started
        assert redis_answers(r_url) and mqtt_answers(m_url)
        assert str(dead) not in r_url and str(dead) not in m_url
        procs = [p for _, p in services.procs]
    finally:
        stopped = services.close()
    assert sorted(stopped) == ["mosquitto", "redis-server"]
    assert all(p.poll() is not None for p in procs)
    assert not redis_answers(r_url) and not mqtt_answers(m_url)


def test_uses_the_configured_services_when_they_answer(tmp_path: Path, mqtt_port: int) -> None:
    services = Services()
    url, started = ensure_mosquitto(f"mqtt://127.0.0.1:{mqtt_port}", services, tmp_path)
    assert (url, started) == (f"mqtt://127.0.0.1:{mqtt_port}", False)
    assert services.procs == []


def test_a_missing_binary_says_to_run_setup() -> None:
    with pytest.raises(PreflightError) as e:
        _need_binary("redis-server-that-does-not-exist")
    assert "scripts/setup.sh" in e.value.message and "CITYBRAIN_REDIS_URL" in e.value.message


def test_data_dir_checks(tmp_path: Path) -> None:
    assert check_data_dir(tmp_path / "new" / "dir").is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(PreflightError) as e:
        check_data_dir(tmp_path / "f" / "d")
    assert "not writable" in e.value.message and e.value.field == "--data-dir"

"""Shared fixtures: a temporary data dir and settings, service URLs, free ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TEST_DATA = REPO / "tests" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "citybrain"
    d.mkdir()
    monkeypatch.setenv("CITYBRAIN_DATA_DIR", str(d))
    monkeypatch.delenv("CITYBRAIN_DB_URL", raising=False)
    from cloud.core.config import get_settings

    get_settings.cache_clear()
    yield d
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("CITYBRAIN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    if not port_answers(6379):
        pytest.fail("Redis does not answer on 127.0.0.1:6379: run scripts/services.sh")
    return url


@pytest.fixture(scope="session")
def mqtt_port() -> int:
    if not port_answers(1883):
        pytest.fail("Mosquitto does not answer on 127.0.0.1:1883: run scripts/services.sh")
    return 1883


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests keep files worth looking at (screenshots, plots)."""
    d = Path(os.environ.get("CITYBRAIN_TEST_ARTIFACTS", REPO / "test-artifacts"))
    d.mkdir(parents=True, exist_ok=True)
    return d

"""One settings object per process, every field documented in README."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.core.config import Settings
from tests.conftest import REPO


def test_every_setting_is_documented_in_readme() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [
        f"CITYBRAIN_{n.upper()}"
        for n in Settings.model_fields
        if f"CITYBRAIN_{n.upper()}" not in readme
    ]
    assert missing == []


def test_env_prefix_defaults_and_validation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CITYBRAIN_DATA_DIR", raising=False)
    assert Settings().data_dir == Path("~/.citybrain").expanduser()
    monkeypatch.setenv("CITYBRAIN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CITYBRAIN_DB_URL", "postgresql://u@h/db")
    s = Settings()
    assert s.data_dir == tmp_path and s.database_url == "postgresql+psycopg://u@h/db"
    monkeypatch.setenv("CITYBRAIN_API_PORT", "70000")
    with pytest.raises(ValueError, match="api_port"):
        Settings()

"""AgentConfig: file (TOML/JSON) < env (CITYBRAIN_EDGE_*) < arguments; clear errors."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent import ConfigError, load_config
from edge_agent._config import parse_public_key


def test_toml_file_env_and_arguments_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "edge.toml"
    f.write_text(
        'device_id = "cam-1"\nbroker_url = "mqtts://broker.example:8884"\ncache_max_bytes = 1000\n'
        '[hard]\nbudget_bytes_per_hour = 5\n[[hard.selectors]]\nkind = "margin"\n'
        "params = { max_margin = 0.2 }\nlimits = { per_hour = 3 }\n"
    )
    monkeypatch.setenv("CITYBRAIN_EDGE_CACHE_MAX_BYTES", "2000")
    monkeypatch.setenv("CITYBRAIN_EDGE_HARD__ENABLED", "false")
    cfg = load_config(f, fetch_mode="http")
    assert cfg.device_id == "cam-1" and cfg.mqtt_username == "cam-1"
    assert (cfg.broker_host, cfg.broker_port, cfg.broker_tls) == ("broker.example", 8884, True)
    assert cfg.cache_max_bytes == 2000  # env beats file
    assert cfg.fetch_mode == "http"  # argument beats both
    assert cfg.hard.enabled is False and cfg.hard.budget_bytes_per_hour == 5
    assert cfg.hard.selectors[0].kind == "margin" and cfg.hard.selectors[0].limits.per_hour == 3


def test_json_file(tmp_path: Path) -> None:
    f = tmp_path / "edge.json"
    f.write_text('{"device_id": "cam-2", "chunk_size": 4096}')
    cfg = load_config(f)
    assert cfg.chunk_size == 4096 and cfg.broker_port == 1883 and not cfg.broker_tls


@pytest.mark.parametrize(
    ("text", "suffix", "needle"),
    [
        ('device_id = "cam/1"\n', ".toml", "device_id"),
        ('device_id = "c"\nbroker_url = "http://x"\n', ".toml", "broker_url"),
        ('device_id = "c"\nfetch_mode = "ftp"\n', ".toml", "fetch_mode"),
        ('device_id = "c"\n[[hard.selectors]]\nkind = "vibes"\n', ".toml", "hard.selectors.0.kind"),
        ('device_id = "c"\nsurprise = 1\n', ".toml", "surprise"),
        ("device_id = ", ".toml", "not valid"),
        ("[1]", ".json", "top level"),
    ],
)
def test_bad_config_names_file_and_field(
    tmp_path: Path, text: str, suffix: str, needle: str
) -> None:
    f = tmp_path / f"edge{suffix}"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(f) in str(e.value) and needle in str(e.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.toml")


def test_public_key_formats(tmp_path: Path) -> None:
    pub = Ed25519PrivateKey.generate().public_key()
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for name, data in (
        ("raw", raw),
        ("pem", pem),
        ("hex", raw.hex().encode() + b"\n"),
        ("b64", base64.b64encode(raw)),
    ):
        (tmp_path / name).write_bytes(data)
        assert parse_public_key(tmp_path / name) == raw
    (tmp_path / "junk").write_text("hello")
    with pytest.raises(ConfigError, match="not an ed25519 public key"):
        parse_public_key(tmp_path / "junk")
    cfg = load_config(None, device_id="c")
    with pytest.raises(ConfigError, match="store_public_key"):
        cfg.load_store_key()

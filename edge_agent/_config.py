"""Agent configuration: one pydantic-settings object per process.

Values come from (highest priority first) constructor arguments, environment
variables prefixed ``CITYBRAIN_EDGE_`` (nested fields with ``__``, e.g.
``CITYBRAIN_EDGE_HARD__BUDGET_BYTES_PER_HOUR``), then the TOML/JSON file given
with ``--config``, then defaults.
"""

from __future__ import annotations

import base64
import json
import threading
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edge_agent._errors import ConfigError
from edge_agent.protocol import Ident

SelectorKind = Literal[
    "low_confidence",
    "near_threshold",
    "margin",
    "entropy",
    "novelty",
    "disagreement",
    "likely_miss",
]


class RateLimits(BaseModel):
    """At most this many samples per window; ``None`` = no limit for that window."""

    model_config = ConfigDict(extra="forbid")
    per_minute: int | None = Field(default=None, ge=0)
    per_hour: int | None = Field(default=None, ge=0)
    per_day: int | None = Field(default=None, ge=0)


class SelectorSpec(BaseModel):
    """One hard-sample selector: its kind, its parameters and its own rate limits."""

    model_config = ConfigDict(extra="forbid")
    kind: SelectorKind
    params: dict[str, float] = Field(
        default_factory=dict, description="factory arguments, e.g. {'low': 0.3, 'high': 0.6}"
    )
    limits: RateLimits = Field(default_factory=lambda: RateLimits(per_minute=6, per_hour=60))


class HardSampleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    selectors: list[SelectorSpec] = Field(
        default_factory=lambda: [
            SelectorSpec(kind="low_confidence"),
            SelectorSpec(kind="entropy"),
            SelectorSpec(kind="likely_miss"),
        ]
    )
    budget_bytes_per_hour: int = Field(default=20 * 1024 * 1024, ge=0)
    outbox_max_rows: int = Field(default=5000, gt=0)
    jpeg_quality: int = Field(default=85, ge=10, le=100)
    max_image_side: int = Field(default=640, ge=32)
    publish_window: int = Field(default=20, gt=0, description="unacked publishes in flight")
    receipt_window: int = Field(
        default=200, gt=0, description="samples published and not yet named by a receipt"
    )
    receipt_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="re-send a sample (same id) without a receipt after this; doubles per try",
    )
    retry_min_s: float = Field(
        default=1.0, gt=0, description="backoff after a refused PUBACK (0x10 or >= 0x80)"
    )
    retry_max_s: float = Field(default=60.0, gt=0, description="longest such backoff")
    resend_budget_bytes_per_hour: int | None = Field(
        default=40 * 1024 * 1024,
        gt=0,
        description="cap on re-sends and on the backlog drained after a reconnect or restart "
        "(bytes in any sliding hour; rows wait, never dropped); None = no cap",
    )


class _FileSource(PydanticBaseSettingsSource):
    """Reads the ``--config`` file (TOML or JSON) named by ``_config_file``."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self._path is None:
            return {}
        return read_config_file(self._path)


def read_config_file(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'TOML'}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a table/object")
    return data


class AgentConfig(BaseSettings):
    """Everything one edge agent needs to know."""

    model_config = SettingsConfigDict(
        env_prefix="CITYBRAIN_EDGE_", env_nested_delimiter="__", extra="forbid"
    )

    device_id: Ident = Field(description="this device's id (also its MQTT username)")
    broker_url: str = Field(default="mqtt://127.0.0.1:1883", description="mqtt:// or mqtts://")
    username: str | None = Field(default=None, description="MQTT username; default device_id")
    password: SecretStr | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = Field(default=None, description="client certificate (PEM)")
    tls_key: Path | None = Field(default=None, description="client key (PEM)")
    store_public_key: Path | None = Field(
        default=None,
        description="pinned ed25519 store key: PEM, raw 32 bytes, or hex/base64 text",
    )
    data_dir: Path = Field(default=Path("/var/lib/citybrain-edge"))
    cache_max_bytes: int = Field(default=2 * 1024**3, gt=0)
    fetch_mode: Literal["mqtt", "http"] = "mqtt"
    http_base_url: str | None = Field(default=None, description="store URL for fetch_mode=http")
    chunk_size: int = Field(default=1024 * 1024, gt=0, le=4 * 1024 * 1024)
    chunk_window: int = Field(default=4, ge=1, le=64)
    chunk_timeout_s: float = Field(default=10.0, gt=0)
    chunk_retries: int = Field(default=5, ge=0)
    keepalive_s: int = Field(default=30, ge=5)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    report_interval_s: float = Field(default=10.0, gt=0)
    retry_failed_s: float = Field(default=30.0, gt=0, description="retry a failed revision")
    prefer_gpu: bool = True
    tensorrt_build: bool = Field(default=True, description="build TRT engines from ONNX")
    ort_threads: int = Field(default=0, ge=0, description="ONNX Runtime threads; 0 = all")
    source_override: str | None = Field(
        default=None, description="run every assignment on this source (fleet simulation)"
    )
    warmup_runs: int = Field(default=2, ge=0)
    source_retry_max_s: float = Field(default=30.0, gt=0)
    hard: HardSampleConfig = Field(default_factory=HardSampleConfig)
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve Prometheus /metrics here; None or 0 = off"
    )
    metrics_host: str = Field(default="127.0.0.1", description="address /metrics binds")
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one object per line (ts, level, logger, msg, device)"
    )
    follow_channel: str = Field(
        default="stable",
        min_length=1,
        description="store channel whose announced versions are prefetched",
    )
    prefetch: bool = Field(
        default=True,
        description="download announced versions of the algorithms in use ahead of time "
        "(into the cache only; the desired state alone decides what runs)",
    )
    outbox_report_min_s: float = Field(
        default=5.0, gt=0, description="a changed outbox is reported at most this often"
    )

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, v: str) -> str:
        u = urlparse(v)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
            raise ValueError(f"broker_url must look like mqtt://host:1883, got {v!r}")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls, _CONFIG_FILE[0]))

    # -- derived ---------------------------------------------------------
    @property
    def broker_host(self) -> str:
        return urlparse(self.broker_url).hostname or "127.0.0.1"

    @property
    def broker_port(self) -> int:
        u = urlparse(self.broker_url)
        return u.port or (8883 if u.scheme in ("mqtts", "ssl") else 1883)

    @property
    def broker_tls(self) -> bool:
        return urlparse(self.broker_url).scheme in ("mqtts", "ssl") or self.tls_ca is not None

    @property
    def mqtt_username(self) -> str:
        return self.username or self.device_id

    def load_store_key(self) -> bytes:
        """The pinned store public key as 32 raw bytes."""
        if self.store_public_key is None:
            raise ConfigError("store_public_key: no pinned store key configured")
        return parse_public_key(self.store_public_key)


_CONFIG_FILE: list[Path | None] = [None]
_CONFIG_LOCK = threading.Lock()


def load_config(path: Path | None = None, **overrides: Any) -> AgentConfig:
    """Build the config from ``path`` (TOML/JSON), env and ``overrides``.

    Raises :class:`ConfigError` with the file and field named.
    """
    with _CONFIG_LOCK:
        _CONFIG_FILE[0] = Path(path) if path else None
        try:
            return AgentConfig(**overrides)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            where = f"{path}: " if path else ""
            raise ConfigError(f"{where}{loc}: {err['msg']}") from None
        finally:
            _CONFIG_FILE[0] = None


def parse_public_key(path: Path) -> bytes:
    """Read an ed25519 public key: PEM/DER, raw 32 bytes, or hex/base64 text."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"store_public_key: cannot read {path}: {e.strerror}") from None
    if len(data) == 32:
        return data
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text)
        except ValueError as e:
            raise ConfigError(f"store_public_key: {path}: bad PEM: {e}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"store_public_key: {path}: not an ed25519 key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        candidates = [bytes.fromhex(text.decode())]
    except (ValueError, UnicodeDecodeError):
        candidates = []
    try:
        candidates.append(base64.b64decode(text, validate=True))
    except ValueError:
        pass
    for raw in candidates:
        if len(raw) == 32:
            return raw
    raise ConfigError(f"store_public_key: {path}: not an ed25519 public key (PEM, raw, hex, b64)")

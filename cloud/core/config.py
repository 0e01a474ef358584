"""The one settings object of a cloud process (API, worker, ingest, CLI).

Every field comes from an environment variable with the ``CITYBRAIN_`` prefix,
e.g. ``CITYBRAIN_DATA_DIR``; see README "Configuration".
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYBRAIN_", extra="ignore")

    data_dir: Path = Field(
        default=Path("~/.citybrain"),
        description="root of the catalog database, blobs, store and caches",
    )
    db_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite:///<data_dir>/catalog.db. "
        "postgresql://user@host/db selects PostgreSQL (psycopg 3)",
    )
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="job queue + live state")
    mqtt_url: str = Field(default="mqtt://127.0.0.1:1883", description="broker for devices")
    api_host: str = Field(default="127.0.0.1", description="address `citybrain serve` binds")
    api_port: int = Field(default=8000, ge=1, le=65535, description="port `citybrain serve` binds")
    max_upload_mb: int = Field(default=512, gt=0, description="largest accepted upload body")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="service logs (serve, ingest, worker, schedule run): text, or json "
        "(one object per line: ts, level, logger, msg, extra fields); --log-format overrides",
    )
    store_key_file: Path | None = Field(
        default=None, description="ed25519 private key of the store; default <data_dir>/store/key"
    )
    bootstrap_token: str | None = Field(
        default=None, description="if set, an admin API token created at start-up"
    )
    job_max_attempts: int = Field(default=3, ge=1, le=100, description="tries before dead-letter")
    job_visibility_s: float = Field(
        default=60.0, gt=0, description="a claimed job not heartbeated for this long is retried"
    )
    job_backoff_s: float = Field(
        default=5.0, ge=0, description="first retry delay of a failed job; doubles per attempt"
    )
    job_prefix: str = Field(
        default="citybrain:jobs", min_length=1, description="Redis key prefix of the job queue"
    )
    events_channel: str = Field(
        default="citybrain:events", min_length=1, description="Redis pub/sub channel of live events"
    )
    fleet_prefix: str = Field(
        default="citybrain:fleet", min_length=1, description="Redis key prefix of the fleet state"
    )
    fleet_history_min: int = Field(
        default=60, ge=2, le=1440, description="minutes of per-minute fleet counters kept"
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster that heavy jobs fan out to (host:port, auto or "
        "ray://host:10001); unset: RAY_ADDRESS, else a local ray.init()",
    )
    ray_min_samples: int = Field(
        default=10_000,
        ge=0,
        description="embedding and pool-scoring jobs with fewer samples to do run "
        "in-process, not on Ray",
    )
    ray_blob_paths: bool = Field(
        default=False,
        description="Ray workers read blob files by path (the data dir is mounted at the "
        "same path on every node) instead of receiving the image bytes",
    )

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @property
    def database_url(self) -> str:
        if self.db_url:
            url = self.db_url
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        return f"sqlite:///{self.data_dir / 'catalog.db'}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings (read once from the environment)."""
    return Settings()

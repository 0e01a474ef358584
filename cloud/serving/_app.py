"""Application builder for Ray Serve config files (KubeRay ``RayService``
``serveConfigV2``): ``import_path: cloud.serving:app_builder`` with ``args``
validated by :class:`AppArgs`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud.serving._config import ServingConfig


class AppArgs(BaseModel):
    """``args`` of a Serve application serving one algorithm version."""

    model_config = ConfigDict(extra="forbid")

    algorithm: str = Field(min_length=1, description="algorithm id in the store")
    version: str | None = Field(default=None, description="exact version to serve")
    channel: str | None = Field(
        default=None, description="serve the version this channel points at (e.g. stable)"
    )
    store_dir: str | None = Field(
        default=None, description="store root (default CITYBRAIN_DATA_DIR/store)"
    )
    public_key_file: str | None = Field(
        default=None,
        description="raw ed25519 public key of the store (default <store key>.pub)",
    )
    artifact_url: str | None = Field(
        default=None, description="replicas fetch archives from here instead of store_dir"
    )
    serving: ServingConfig = Field(default_factory=ServingConfig, description="batching, scaling")

    @model_validator(mode="after")
    def _one_selector(self) -> AppArgs:
        if (self.version is None) == (self.channel is None):
            raise ValueError("give exactly one of version or channel")
        return self


def app_builder(args: dict[str, Any]) -> Any:
    """Build the Serve application described by ``args`` (see :class:`AppArgs`)."""
    from pathlib import Path

    import algorithm_store as st
    from cloud.core.config import Settings
    from cloud.serving._deployment import build_application, source_for
    from cloud.serving._predictor import resolve_channel

    a = AppArgs.model_validate(args)
    settings = Settings()
    store_dir = Path(a.store_dir) if a.store_dir else settings.store_dir
    if a.public_key_file:
        key_file = Path(a.public_key_file)
    else:
        key_file = st.public_key_path(settings.store_key_file or settings.store_dir / "key")
    store = st.AlgorithmStore(store_dir, public_key=st.load_public_key(key_file))
    version = a.version or resolve_channel(store, a.algorithm, a.channel or "")
    source = source_for(store, a.algorithm, version, artifact_url=a.artifact_url)
    return build_application(source, a.serving)

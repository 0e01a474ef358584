"""The algorithm store: signed, versioned packages with engines per hardware
target, channels and staged rollouts, served over HTTP (Range/ETag) and MQTT
chunks.

The manifest, its signing bytes, package verification and the archive format
live in :mod:`edge_agent.protocol` (the wire contract); this package builds,
signs, verifies, stores and serves packages.

Exception tree::

    StoreError                 (``kind`` says how to report it)
    ├── PackageRejected        unsigned / wrongly signed, hash mismatch, unsafe path
    │   ├── OnnxInvalid        fails onnx.checker or ONNX Runtime cannot load/run it
    │   ├── ExternalDataEscapes  external-data location outside the package
    │   └── GoldenMismatch     output on the golden input differs
    ├── NotFound               unknown algorithm, version, channel, rollout, artifact
    ├── VersionExists          versions are immutable
    ├── DowngradeRefused       older version on a channel without explicit rollback
    ├── RolloutConflict        a rollout already holds the channel
    ├── InvalidTransition      rollout state change not in ALLOWED_TRANSITIONS
    ├── KeyProblem             missing / unreadable key, or one that would be overwritten
    └── EngineUnavailable      no TensorRT or GPU here (``algorithm_store.engines``)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._builder import BuiltPackage, build_package
from ._errors import (
    DowngradeRefused,
    EngineUnavailable,
    ExternalDataEscapes,
    GoldenMismatch,
    InvalidTransition,
    KeyProblem,
    NotFound,
    OnnxInvalid,
    PackageRejected,
    RolloutConflict,
    StoreError,
    VersionExists,
)
from ._keys import (
    keygen,
    load_private_key,
    load_public_key,
    make_announcement,
    public_key_path,
    public_key_raw,
    sign_announcement,
    sign_manifest,
)
from ._rollout import (
    ALLOWED_TRANSITIONS,
    DeviceReport,
    GroupProgress,
    Rollout,
    RolloutState,
    Transition,
)
from ._store import AlgorithmStore, VersionInfo, verify_archive

if TYPE_CHECKING:
    from fastapi import APIRouter


def make_router(
    store: AlgorithmStore, *, require_operator: Callable[..., Any] | None = None
) -> APIRouter:
    """The store's FastAPI ``APIRouter`` (mounted under ``/api/v1/store`` by the
    API): algorithms, versions, rollouts, guarded promote/rollback/rollout
    routes (``require_operator`` is a FastAPI dependency) and resumable
    ``GET /artifacts/{sha256}``. FastAPI is imported only when this is called,
    so the rest of the store works without it."""
    from ._http import make_router as _make_router

    return _make_router(store, require_operator=require_operator)


def __getattr__(name: str):  # lazy: paho only when MQTT is used
    if name in ("ChunkService", "ChunkWorkers", "MqttAnnouncer", "connect_mqtt"):
        from . import _mqtt

        return {
            "ChunkService": _mqtt.ChunkService,
            "ChunkWorkers": _mqtt.ChunkWorkers,
            "MqttAnnouncer": _mqtt.MqttAnnouncer,
            "connect_mqtt": _mqtt.connect,
        }[name]
    raise AttributeError(f"module 'algorithm_store' has no attribute {name!r}")


__all__ = [
    "ALLOWED_TRANSITIONS",
    "AlgorithmStore",
    "BuiltPackage",
    "ChunkService",
    "ChunkWorkers",
    "DeviceReport",
    "DowngradeRefused",
    "EngineUnavailable",
    "ExternalDataEscapes",
    "GoldenMismatch",
    "GroupProgress",
    "InvalidTransition",
    "KeyProblem",
    "MqttAnnouncer",
    "NotFound",
    "OnnxInvalid",
    "PackageRejected",
    "Rollout",
    "RolloutConflict",
    "RolloutState",
    "StoreError",
    "Transition",
    "VersionExists",
    "VersionInfo",
    "build_package",
    "connect_mqtt",
    "keygen",
    "load_private_key",
    "load_public_key",
    "make_announcement",
    "make_router",
    "public_key_path",
    "public_key_raw",
    "sign_announcement",
    "sign_manifest",
    "verify_archive",
]

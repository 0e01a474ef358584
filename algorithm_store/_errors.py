"""The exception tree of the algorithm store (drawn in the package docstring)."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every algorithm-store error.

    ``kind`` says how a caller reports it: ``invalid`` (bad input, HTTP 400/422),
    ``not_found`` (404), ``conflict`` (409), ``forbidden`` (403) or
    ``unavailable`` (503).
    """

    kind = "invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


class PackageRejected(StoreError):
    """A package that must not be published or trusted (signature, hashes,
    ONNX check, golden check, unsafe paths)."""


class OnnxInvalid(PackageRejected):
    """The ONNX model fails ``onnx.checker`` or cannot be loaded."""


class ExternalDataEscapes(PackageRejected):
    """An ONNX external-data location points outside the package."""


class GoldenMismatch(PackageRejected):
    """The model's output on the golden input differs from the golden output."""


class NotFound(StoreError):
    """Unknown algorithm, version, channel, rollout or artifact."""

    kind = "not_found"


class VersionExists(StoreError):
    """Versions are immutable: this (algorithm, version) is already published."""

    kind = "conflict"


class DowngradeRefused(StoreError):
    """A channel move to an older version without an explicit rollback."""

    kind = "conflict"


class RolloutConflict(StoreError):
    """A rollout already runs on that channel, or the channel is locked by one."""

    kind = "conflict"


class InvalidTransition(StoreError):
    """A rollout state change that ALLOWED_TRANSITIONS does not permit."""

    kind = "conflict"


class KeyProblem(StoreError):
    """A signing key that is missing, unreadable, or would be overwritten."""


class EngineUnavailable(StoreError):
    """TensorRT or a GPU is not present here, so no engine can be built."""

    kind = "unavailable"


__all__ = [
    "DowngradeRefused",
    "EngineUnavailable",
    "ExternalDataEscapes",
    "GoldenMismatch",
    "InvalidTransition",
    "KeyProblem",
    "NotFound",
    "OnnxInvalid",
    "PackageRejected",
    "RolloutConflict",
    "StoreError",
    "VersionExists",
]

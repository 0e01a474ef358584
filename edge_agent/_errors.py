"""Errors of the edge agent (wire-contract errors live in ``edge_agent.protocol``).

Exception tree::

    EdgeError
    ├── ConfigError          a bad agent configuration (names the field/file)
    ├── Superseded           a newer desired revision cancelled an apply
    ├── FetchError           an artifact could not be downloaded
    │   └── ArtifactMismatch the downloaded archive's size/sha256 differ from the ref
    ├── CacheFull            the cache cannot hold an artifact within its size limit
    ├── ModelLoadError       a runtime refused the model (or the assignment does not match it)
    │   └── GoldenCheckFailed  the model's output on the golden input is off
    └── SourceError          a video source could not be opened or read
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of the agent's own errors."""


class ConfigError(EdgeError):
    """A bad configuration value or file."""


class Superseded(EdgeError):
    """A newer desired revision arrived; the in-flight apply stops between steps."""


class FetchError(EdgeError):
    """An artifact could not be fetched."""


class ArtifactMismatch(FetchError):
    """The fetched archive differs from its ArtifactRef (size or sha256)."""


class CacheFull(EdgeError):
    """The artifact does not fit in the cache size limit (or the disk is full)."""


class ModelLoadError(EdgeError):
    """A model that cannot be loaded or does not match its assignment."""


class GoldenCheckFailed(ModelLoadError):
    """The model's output on the packaged golden input is outside tolerance."""


class SourceError(EdgeError):
    """A video source that cannot be opened or read."""

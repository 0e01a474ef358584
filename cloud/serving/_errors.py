"""Errors of :mod:`cloud.serving` (subclasses of the cloud tree, so the CLI and
API report them like any other bad input)."""

from __future__ import annotations

from cloud.errors import CitybrainError, InvalidInput, NotFound, Unavailable


class ServingError(CitybrainError):
    """Base of every serving error."""


class PackageUnusable(ServingError, InvalidInput):
    """The package cannot be served: bad signature or hash, unsupported task or
    input spec, or ONNX Runtime cannot load it."""


class InvalidRequest(ServingError, InvalidInput):
    """A serving request is malformed (e.g. sample ids that do not match the images)."""


class BadImage(InvalidRequest):
    """An image given to a predictor has the wrong type, dtype or shape."""


class VersionNotFound(ServingError, NotFound):
    """No such algorithm, version or channel in the store."""


class RayUnavailable(ServingError, Unavailable):
    """Ray / Ray Serve is not installed or could not start."""

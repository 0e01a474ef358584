"""Errors of the control plane, one tree; mapped to HTTP status codes in
``cloud.api.errors`` and to CLI exit code 2 in ``cloud.cli``.

    CitybrainError
    ├── InvalidInput        bad file, field or parameter (HTTP 422 / 400)
    │   └── UnsafeArchive   zip/tar member escaping its root, links (HTTP 400)
    ├── NotFound            (HTTP 404)
    ├── Conflict            duplicate name, immutable thing changed (HTTP 409)
    ├── PayloadTooLarge     over the configured size limit (HTTP 413)
    ├── Unauthorized        missing or unknown token (HTTP 401)
    ├── Forbidden           role may not do this (HTTP 403)
    └── Unavailable         a service (Redis, broker) cannot be reached (HTTP 503)
"""

from __future__ import annotations


class CitybrainError(Exception):
    """Base of every error the control plane reports to a user."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


class InvalidInput(CitybrainError):
    pass


class UnsafeArchive(InvalidInput):
    pass


class NotFound(CitybrainError):
    pass


class Conflict(CitybrainError):
    pass


class PayloadTooLarge(CitybrainError):
    pass


class Unauthorized(CitybrainError):
    pass


class Forbidden(CitybrainError):
    pass


class Unavailable(CitybrainError):
    pass


__all__ = [
    "CitybrainError",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "NotFound",
    "PayloadTooLarge",
    "Unauthorized",
    "Unavailable",
    "UnsafeArchive",
]

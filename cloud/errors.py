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

from collections.abc import Iterator
from contextlib import contextmanager


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


@contextmanager
def graph_errors() -> Iterator[None]:
    """Knowledge-graph errors become this tree (the one translation, used by the API
    and the CLI): unknown node 404, duplicate node or stale graph 409, the rest 422."""
    import knowledge_graph as kg

    try:
        yield
    except kg.UnknownNode as e:
        raise NotFound(e.message, field=e.field) from None
    except (kg.DuplicateNode, kg.StaleGraph) as e:
        raise Conflict(e.message, field=e.field) from None
    except kg.GraphError as e:
        raise InvalidInput(e.message, field=e.field) from None

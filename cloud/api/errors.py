"""THE mapping of :mod:`cloud.errors` to HTTP: every error response of the API
is ``{"error": {"type", "message", "field"}}`` with the status below.

    InvalidInput     422      (request validation errors too)
    UnsafeArchive    400
    NotFound         404
    Conflict         409
    PayloadTooLarge  413
    Unauthorized     401      (+ WWW-Authenticate: Bearer)
    Forbidden        403
    Unavailable      503
    CitybrainError   400      (any other subclass)
    algorithm_store.StoreError  by its ``kind``: invalid 422, not_found 404,
                     conflict 409, forbidden 403, unavailable 503
    anything else    500      (logged; message does not leak internals)
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud.errors import (
    CitybrainError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    UnsafeArchive,
)

log = logging.getLogger("citybrain.api")

#: most specific first
STATUS: list[tuple[type[CitybrainError], int]] = [
    (UnsafeArchive, 400),
    (InvalidInput, 422),
    (NotFound, 404),
    (Conflict, 409),
    (PayloadTooLarge, 413),
    (Unauthorized, 401),
    (Forbidden, 403),
    (Unavailable, 503),
    (CitybrainError, 400),
]

_HTTP_TYPES = {
    400: "InvalidInput",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "InvalidInput",
    503: "Unavailable",
}


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def status_for(exc: CitybrainError) -> int:
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return 400


def error_response(
    status: int, type_: str, message: str, field: str | None = None, headers: dict | None = None
) -> JSONResponse:
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    body = ErrorBody(error=ErrorDetail(type=type_, message=message, field=field))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _citybrain_public_type(exc: CitybrainError) -> str:
    """The nearest class of the public tree (subclasses of other packages map up)."""
    for cls, _ in STATUS:
        if isinstance(exc, cls):
            if type(exc).__module__ == "cloud.errors":
                return type(exc).__name__
            return cls.__name__
    return "CitybrainError"


async def _on_citybrain(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CitybrainError)
    return error_response(status_for(exc), _citybrain_public_type(exc), exc.message, exc.field)


def _loc(loc: tuple | list) -> str:
    return ".".join(str(p) for p in loc)


#: algorithm_store.StoreError.kind -> (status, public type)
STORE_KINDS = {
    "invalid": (422, "InvalidInput"),
    "not_found": (404, "NotFound"),
    "conflict": (409, "Conflict"),
    "forbidden": (403, "Forbidden"),
    "unavailable": (503, "Unavailable"),
}


async def _on_store_error(_: Request, exc: Exception) -> JSONResponse:
    kind = getattr(exc, "kind", "invalid")
    status, type_ = STORE_KINDS.get(kind, STORE_KINDS["invalid"])
    return error_response(
        status, type_, getattr(exc, "message", str(exc)), getattr(exc, "field", None)
    )


async def _on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = _loc(first.get("loc", ()))
    message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return error_response(422, "InvalidInput", message, field or None)


async def _on_http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail
    if isinstance(detail, dict) and "message" in detail:  # algorithm_store.make_router errors
        return error_response(
            exc.status_code,
            _HTTP_TYPES.get(exc.status_code, "HTTPError"),
            str(detail["message"]),
            detail.get("field"),
            dict(exc.headers) if exc.headers else None,
        )
    return error_response(
        exc.status_code,
        _HTTP_TYPES.get(exc.status_code, "HTTPError"),
        str(detail),
        None,
        dict(exc.headers) if exc.headers else None,
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "InternalError", "internal error; see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CitybrainError, _on_citybrain)
    from algorithm_store import StoreError

    app.add_exception_handler(StoreError, _on_store_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_unexpected)


#: for ``responses=`` in routers: documents the error body in OpenAPI
ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorBody, "description": desc}
    for code, desc in [
        (401, "missing or unknown token"),
        (403, "role may not do this"),
        (404, "not found"),
        (409, "conflict"),
        (422, "invalid input"),
    ]
}

__all__ = [
    "ERROR_RESPONSES",
    "STATUS",
    "STORE_KINDS",
    "ErrorBody",
    "ErrorDetail",
    "error_response",
    "install_error_handlers",
    "status_for",
]

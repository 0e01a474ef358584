"""Typed dependencies of the API routes.

``SessionDep`` (a catalog session; commit explicitly), ``CatalogDep``,
``SettingsDep``, ``CurrentUser`` (any valid token) and the role gates built by
:func:`require_role`: ``ViewerUser`` (read), ``AnnotatorUser`` (label, create
datasets, upload), ``OperatorUser`` (annotation tasks, review, publish models)
and ``AdminUser`` (tokens).

A token comes from ``Authorization: Bearer <token>`` or, for the console, the
``citybrain_token`` cookie.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy.orm import Session

from cloud.api.tokens import resolve_token
from cloud.catalog import Catalog
from cloud.catalog.models import Role
from cloud.core.config import Settings
from cloud.errors import Forbidden, Unauthorized

COOKIE = "citybrain_token"

_bearer = HTTPBearer(auto_error=False, description="an API token (`citybrain token create`)")


class Principal(BaseModel):
    """Who is calling: the token's name is the user name (e.g. the annotator)."""

    token_id: int
    name: str
    role: Role


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog


def get_session(catalog: Annotated[Catalog, Depends(get_catalog)]) -> Iterator[Session]:
    with catalog.sessions() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
SessionDep = Annotated[Session, Depends(get_session)]


def token_from_request(request: Request, creds: HTTPAuthorizationCredentials | None) -> str | None:
    if creds is not None and creds.credentials:
        return creds.credentials
    return request.cookies.get(COOKIE) or None


def principal_for(catalog: Catalog, token: str) -> Principal | None:
    with catalog.sessions() as session:
        row = resolve_token(session, token)
        if row is None:
            return None
        return Principal(token_id=row.id, name=row.name, role=row.role)


def get_current_user(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    token = token_from_request(request, creds)
    if not token:
        raise Unauthorized("missing API token: send Authorization: Bearer <token>")
    user = principal_for(request.app.state.catalog, token)
    if user is None:
        raise Unauthorized("unknown or revoked API token")
    return user


CurrentUser = Annotated[Principal, Depends(get_current_user)]

#: what each role may do, by the weakest role allowed
_RANK = {Role.VIEWER: 0, Role.ANNOTATOR: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


def require_role(*roles: Role) -> Callable[[Principal], Principal]:
    """A dependency letting through only callers whose role is in ``roles``."""
    allowed = frozenset(roles)

    def check(user: CurrentUser) -> Principal:
        if user.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise Forbidden(f"role {user.role.value!r} may not do this (needs one of: {names})")
        return user

    return check


def at_least(role: Role) -> Callable[[Principal], Principal]:
    return require_role(*(r for r, rank in _RANK.items() if rank >= _RANK[role]))


ViewerUser = Annotated[Principal, Depends(at_least(Role.VIEWER))]
AnnotatorUser = Annotated[Principal, Depends(at_least(Role.ANNOTATOR))]
OperatorUser = Annotated[Principal, Depends(at_least(Role.OPERATOR))]
AdminUser = Annotated[Principal, Depends(at_least(Role.ADMIN))]

__all__ = [
    "COOKIE",
    "AdminUser",
    "AnnotatorUser",
    "CatalogDep",
    "CurrentUser",
    "OperatorUser",
    "Principal",
    "SessionDep",
    "SettingsDep",
    "ViewerUser",
    "at_least",
    "get_catalog",
    "get_current_user",
    "get_session",
    "principal_for",
    "require_role",
]

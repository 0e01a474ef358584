"""API tokens: created once (the plaintext is shown once), stored as sha256,
revoked but never deleted. Used by the API (bearer auth) and ``citybrain token``.

Errors: ``InvalidInput`` (bad name or role), ``NotFound`` (no such token),
``Conflict`` (token already revoked).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.catalog.models import ApiToken, Role
from cloud.errors import Conflict, InvalidInput, NotFound

TOKEN_PREFIX = "cb_"


class TokenInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    role: Role
    revoked: bool
    created_at: datetime


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _role(role: str | Role) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise InvalidInput(
            f"unknown role {role!r}; one of {[r.value for r in Role]}", field="role"
        ) from None


def create_token(session: Session, name: str, role: str | Role) -> tuple[ApiToken, str]:
    """A new token; returns the row and the plaintext (shown once, never stored)."""
    name = name.strip()
    if not name or len(name) > 128:
        raise InvalidInput("token name must have 1 to 128 characters", field="name")
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, role=_role(role), token_sha256=hash_token(plaintext))
    session.add(row)
    session.flush()
    return row, plaintext


def list_tokens(session: Session, *, include_revoked: bool = True) -> list[ApiToken]:
    q = select(ApiToken).order_by(ApiToken.id)
    if not include_revoked:
        q = q.where(ApiToken.revoked.is_(False))
    return list(session.scalars(q))


def find_token(session: Session, ref: str | int) -> ApiToken:
    """By id, or by name when exactly one live token has that name."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        row = session.get(ApiToken, int(ref))
        if row is None:
            raise NotFound(f"no token with id {ref}", field="token")
        return row
    rows = list(session.scalars(select(ApiToken).where(ApiToken.name == ref)))
    live = [r for r in rows if not r.revoked]
    if not rows:
        raise NotFound(f"no token named {ref!r}", field="token")
    if len(live) > 1:
        raise InvalidInput(
            f"{len(live)} live tokens are named {ref!r}; revoke by id", field="token"
        )
    return (live or rows)[0]


def revoke_token(session: Session, ref: str | int) -> ApiToken:
    row = find_token(session, ref)
    if row.revoked:
        raise Conflict(f"token {row.id} ({row.name}) is already revoked", field="token")
    row.revoked = True
    session.flush()
    return row


def resolve_token(session: Session, plaintext: str) -> ApiToken | None:
    """The live token with this plaintext, or None."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == hash_token(plaintext)))
    if row is None or row.revoked:
        return None
    return row


def ensure_bootstrap_token(session: Session, plaintext: str, name: str = "bootstrap") -> ApiToken:
    """Make ``plaintext`` an admin token unless it exists (a revoked one stays revoked)."""
    if len(plaintext) < 16:
        raise InvalidInput(
            "bootstrap token must have at least 16 characters", field="CITYBRAIN_BOOTSTRAP_TOKEN"
        )
    digest = hash_token(plaintext)
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == digest))
    if row is None:
        row = ApiToken(name=name, role=Role.ADMIN, token_sha256=digest)
        session.add(row)
        session.flush()
    return row


__all__ = [
    "TOKEN_PREFIX",
    "TokenInfo",
    "create_token",
    "ensure_bootstrap_token",
    "find_token",
    "hash_token",
    "list_tokens",
    "resolve_token",
    "revoke_token",
]

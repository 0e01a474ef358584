"""API tokens (admin only, except ``GET /tokens/me``)."""

from __future__ import annotations

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from cloud.api.deps import AdminUser, CurrentUser, Principal, SessionDep
from cloud.api.errors import ERROR_RESPONSES
from cloud.api.tokens import TokenInfo, create_token, find_token, list_tokens, revoke_token
from cloud.catalog.models import Role

router = APIRouter(prefix="/tokens", tags=["tokens"], responses=ERROR_RESPONSES)


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128, description="the user name of the token")
    role: Role


class TokenCreated(TokenInfo):
    token: str = Field(description="the secret; shown once, only its sha256 is stored")


@router.get("/me", response_model=Principal)
def whoami(user: CurrentUser) -> Principal:
    return user


@router.get("", response_model=list[TokenInfo])
def get_tokens(_: AdminUser, session: SessionDep) -> list[TokenInfo]:
    return [TokenInfo.model_validate(t) for t in list_tokens(session)]


@router.post("", response_model=TokenCreated, status_code=201)
def post_token(body: TokenCreate, _: AdminUser, session: SessionDep) -> TokenCreated:
    row, plaintext = create_token(session, body.name, body.role)
    session.commit()
    return TokenCreated(**TokenInfo.model_validate(row).model_dump(), token=plaintext)


@router.delete("/{token_id}", response_model=TokenInfo)
def delete_token(
    _: AdminUser, session: SessionDep, token_id: int = Path(ge=1, le=2**62)
) -> TokenInfo:
    """Revoke a token (kept, marked revoked)."""
    find_token(session, token_id)
    row = revoke_token(session, token_id)
    session.commit()
    return TokenInfo.model_validate(row)

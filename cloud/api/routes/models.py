"""Models in the catalog: listed for everyone; publishing needs an operator."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select

from cloud.api.deps import OperatorUser, SessionDep, ViewerUser
from cloud.api.errors import ERROR_RESPONSES
from cloud.catalog.models import Model, ModelStatus
from cloud.errors import Conflict, NotFound

router = APIRouter(prefix="/models", tags=["models"], responses=ERROR_RESPONSES)

#: allowed status changes of a model record
MODEL_TRANSITIONS: dict[ModelStatus, frozenset[ModelStatus]] = {
    ModelStatus.CANDIDATE: frozenset({ModelStatus.PUBLISHED, ModelStatus.REJECTED}),
    ModelStatus.PUBLISHED: frozenset({ModelStatus.ARCHIVED}),
    ModelStatus.REJECTED: frozenset(),
    ModelStatus.ARCHIVED: frozenset(),
}


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    algorithm: str
    version: str
    task: str
    status: ModelStatus
    dataset_version_id: int | None
    task_id: str | None
    backbone: str | None
    labels: list[Any]
    params: dict[str, Any]
    metrics: dict[str, Any]
    artifacts: dict[str, Any]
    created_at: datetime


class ModelPage(BaseModel):
    items: list[ModelOut]
    total: int
    offset: int
    limit: int


@router.get("", response_model=ModelPage)
def list_models(
    _: ViewerUser,
    session: SessionDep,
    algorithm: str | None = Query(default=None, max_length=128),
    status: ModelStatus | None = None,
    offset: int = Query(default=0, ge=0, le=10**9),
    limit: int = Query(default=50, ge=1, le=500),
) -> ModelPage:
    q = select(Model)
    if algorithm is not None:
        q = q.where(Model.algorithm == algorithm)
    if status is not None:
        q = q.where(Model.status == status)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.scalars(
        q.order_by(Model.created_at.desc(), Model.id.desc()).offset(offset).limit(limit)
    )
    return ModelPage(
        items=[ModelOut.model_validate(m) for m in rows], total=total, offset=offset, limit=limit
    )


@router.get("/{model_id}", response_model=ModelOut)
def get_model(_: ViewerUser, session: SessionDep, model_id: int = Path(ge=1, le=2**62)) -> ModelOut:
    m = session.get(Model, model_id)
    if m is None:
        raise NotFound(f"no model {model_id}", field="model_id")
    return ModelOut.model_validate(m)


@router.post("/{model_id}/publish", response_model=ModelOut)
def publish_model(
    _: OperatorUser, session: SessionDep, model_id: int = Path(ge=1, le=2**62)
) -> ModelOut:
    """Mark a candidate published; the algorithm's previously published version
    is archived. (The evaluation gate of the flywheel decides *whether* to call
    this; the API only enforces roles and the status table.)"""
    m = session.get(Model, model_id)
    if m is None:
        raise NotFound(f"no model {model_id}", field="model_id")
    if ModelStatus.PUBLISHED not in MODEL_TRANSITIONS[m.status]:
        raise Conflict(f"model {model_id} is {m.status.value}; only a candidate can be published")
    for old in session.scalars(
        select(Model).where(Model.algorithm == m.algorithm, Model.status == ModelStatus.PUBLISHED)
    ):
        old.status = ModelStatus.ARCHIVED
    m.status = ModelStatus.PUBLISHED
    session.commit()
    return ModelOut.model_validate(m)

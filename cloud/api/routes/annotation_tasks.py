"""Annotation tasks: create (operator), work on them (annotator: my items,
next, submit), review (operator), agreement, close."""

from __future__ import annotations

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.deps import AnnotatorUser, CatalogDep, OperatorUser, SessionDep, ViewerUser
from cloud.api.errors import ERROR_RESPONSES
from cloud.api.routes.annotations import AnnotationOut
from cloud.api.routes.events import publish_event
from cloud.catalog import annotation as ann
from cloud.catalog.models import (
    Annotation,
    Task,
    utcnow,
)

router = APIRouter(prefix="/annotation-tasks", tags=["annotation tasks"], responses=ERROR_RESPONSES)

TaskId = Path(max_length=64, description="annotation task id")


class SubmitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_id: str = Field(min_length=1, max_length=64)
    label: str | None = Field(default=None, min_length=1, max_length=128)
    boxes: list[ann.Box] | None = Field(default=None, max_length=1000)
    accept_prelabel: bool = False


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    annotation_id: int = Field(ge=1, le=2**62)
    action: ann.ReviewAction
    label: str | None = Field(default=None, min_length=1, max_length=128)
    boxes: list[ann.Box] | None = Field(default=None, max_length=1000)


class CloseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    force: bool = False


class SubmitOut(BaseModel):
    annotation: AnnotationOut
    progress: float
    next: ann.ItemView | None


def _publish(request: Request, task: Task) -> None:
    publish_event(
        request.app.state.settings,
        {
            "type": "task",
            "task_id": task.id,
            "kind": task.kind.value,
            "status": task.status.value,
            "progress": task.progress,
            "message": task.message,
            "at": utcnow().isoformat(),
        },
    )


@router.post("", response_model=ann.TaskSummary, status_code=201)
def create_task(
    spec: ann.AnnotationTaskSpec, user: OperatorUser, session: SessionDep, catalog: CatalogDep
) -> ann.TaskSummary:
    task = ann.create_annotation_task(catalog, session, spec, created_by=user.name)
    session.commit()
    return ann.summarize(session, task.id)


@router.get("", response_model=list[ann.TaskSummary])
def list_tasks(
    _: ViewerUser,
    session: SessionDep,
    dataset: str | None = Query(default=None, max_length=128),
    offset: int = Query(default=0, ge=0, le=10**9),
    limit: int = Query(default=50, ge=1, le=500),
) -> list[ann.TaskSummary]:
    tasks = ann.list_annotation_tasks(session, dataset=dataset, offset=offset, limit=limit)
    return [ann.summarize(session, t.id) for t in tasks]


@router.get("/{task_id}", response_model=ann.TaskSummary)
def get_task(_: ViewerUser, session: SessionDep, task_id: str = TaskId) -> ann.TaskSummary:
    return ann.summarize(session, task_id)


@router.get("/{task_id}/items", response_model=list[ann.ItemView])
def my_items(user: AnnotatorUser, session: SessionDep, task_id: str = TaskId) -> list[ann.ItemView]:
    """The caller's items (done and open); claims the next batch when all are done."""
    items = ann.my_items(session, task_id, user.name)
    session.commit()
    return items


@router.get("/{task_id}/next", response_model=ann.ItemView | None)
def next_item(
    user: AnnotatorUser, session: SessionDep, task_id: str = TaskId
) -> ann.ItemView | None:
    item = ann.next_item(session, task_id, user.name)
    session.commit()
    return item


@router.post("/{task_id}/submit", response_model=SubmitOut)
def submit(
    body: SubmitIn,
    user: AnnotatorUser,
    session: SessionDep,
    catalog: CatalogDep,
    request: Request,
    task_id: str = TaskId,
) -> SubmitOut:
    row = ann.submit(
        catalog,
        session,
        task_id,
        user.name,
        body.sample_id,
        label=body.label,
        boxes=body.boxes,
        accept_prelabel=body.accept_prelabel,
    )
    session.commit()
    task = ann.get_annotation_task(session, task_id)
    _publish(request, task)
    nxt = ann.next_item(session, task_id, user.name)
    session.commit()
    return SubmitOut(annotation=AnnotationOut.model_validate(row), progress=task.progress, next=nxt)


@router.get("/{task_id}/review", response_model=list[ann.ItemView])
def review_queue(
    _: OperatorUser,
    session: SessionDep,
    task_id: str = TaskId,
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[ann.ItemView]:
    return ann.review_queue(session, task_id, limit=limit)


@router.post("/{task_id}/review", response_model=AnnotationOut)
def review(
    body: ReviewIn,
    user: OperatorUser,
    session: SessionDep,
    catalog: CatalogDep,
    request: Request,
    task_id: str = TaskId,
) -> AnnotationOut:
    row = ann.review(
        catalog,
        session,
        task_id,
        body.annotation_id,
        body.action,
        reviewer=user.name,
        label=body.label,
        boxes=body.boxes,
    )
    session.commit()
    _publish(request, ann.get_annotation_task(session, task_id))
    return AnnotationOut.model_validate(session.get(Annotation, row.id))


@router.get("/{task_id}/agreement", response_model=ann.Agreement)
def agreement(_: ViewerUser, session: SessionDep, task_id: str = TaskId) -> ann.Agreement:
    return ann.agreement(session, task_id)


@router.post("/{task_id}/close", response_model=ann.TaskSummary)
def close(
    body: CloseIn, _: OperatorUser, session: SessionDep, request: Request, task_id: str = TaskId
) -> ann.TaskSummary:
    task = ann.close_task(session, task_id, force=body.force)
    session.commit()
    _publish(request, task)
    return ann.summarize(session, task_id)

"""Tasks of every kind (import, annotation, mining, training, export,
evaluation): status, progress, logs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select

from cloud.api.deps import CatalogDep, OperatorUser, SessionDep, SettingsDep, ViewerUser
from cloud.api.errors import ERROR_RESPONSES
from cloud.catalog.models import Dataset, Task, TaskKind, TaskLog, TaskStatus
from cloud.errors import Conflict, NotFound, Unavailable

router = APIRouter(prefix="/tasks", tags=["tasks"], responses=ERROR_RESPONSES)


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    kind: TaskKind
    status: TaskStatus
    title: str
    dataset_id: int | None
    progress: float
    message: str
    params: dict[str, Any]
    result: dict[str, Any]
    error: str | None
    attempts: int
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None


class TaskLogOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    at: datetime
    level: str
    message: str


class TaskDetail(TaskOut):
    logs: list[TaskLogOut]


class TaskPage(BaseModel):
    items: list[TaskOut]
    total: int
    offset: int
    limit: int


@router.get("", response_model=TaskPage)
def list_tasks(
    _: ViewerUser,
    session: SessionDep,
    kind: TaskKind | None = None,
    status: TaskStatus | None = None,
    dataset: str | None = Query(default=None, max_length=128),
    offset: int = Query(default=0, ge=0, le=10**9),
    limit: int = Query(default=50, ge=1, le=500),
) -> TaskPage:
    q = select(Task)
    if kind is not None:
        q = q.where(Task.kind == kind)
    if status is not None:
        q = q.where(Task.status == status)
    if dataset is not None:
        ds_id = session.scalar(select(Dataset.id).where(Dataset.name == dataset))
        if ds_id is None:
            raise NotFound(f"no dataset named {dataset!r}", field="dataset")
        q = q.where(Task.dataset_id == ds_id)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.scalars(q.order_by(Task.created_at.desc(), Task.id).offset(offset).limit(limit))
    return TaskPage(
        items=[TaskOut.model_validate(t) for t in rows], total=total, offset=offset, limit=limit
    )


@router.get("/{task_id}", response_model=TaskDetail)
def get_task(
    _: ViewerUser,
    session: SessionDep,
    task_id: str = Path(max_length=64),
    log_limit: int = Query(default=200, ge=0, le=10_000),
) -> TaskDetail:
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id!r}", field="task_id")
    logs = list(
        session.scalars(
            select(TaskLog)
            .where(TaskLog.task_id == task.id)
            .order_by(TaskLog.id.desc())
            .limit(log_limit)
        )
    )[::-1]
    out = TaskOut.model_validate(task).model_dump()
    return TaskDetail(**out, logs=[TaskLogOut.model_validate(x) for x in logs])


def _queue(settings, catalog):  # type: ignore[no-untyped-def]
    from cloud.jobs import JobQueue

    return JobQueue(settings, sessions=catalog.sessions)


def _existing(session, task_id: str) -> Task:  # type: ignore[no-untyped-def]
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id!r}", field="task_id")
    return task


@router.post("/{task_id}/cancel", response_model=TaskOut)
def cancel_task(
    user: OperatorUser,
    session: SessionDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    task_id: str = Path(max_length=64),
) -> TaskOut:
    """Cancel a queued task, ask the worker running one to stop, or close an
    annotation task (labels already made are kept)."""
    import redis

    from cloud.catalog import annotation as ann

    task = _existing(session, task_id)
    if task.kind == TaskKind.ANNOTATION:
        ann.close_task(session, task_id, force=True)
        session.commit()
        return TaskOut.model_validate(session.get(Task, task_id))
    if task.status.finished:
        raise Conflict(f"task {task_id} is already {task.status.value}", field="task_id")
    session.close()
    try:
        done = _queue(settings, catalog).cancel(task_id)
    except redis.RedisError as e:
        raise Unavailable(f"the job queue (Redis) cannot be reached: {e}") from None
    return TaskOut.model_validate(done)


@router.post("/{task_id}/retry", response_model=TaskOut)
def retry_task(
    user: OperatorUser,
    session: SessionDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    task_id: str = Path(max_length=64),
) -> TaskOut:
    """Re-queue a failed or dead-lettered task."""
    import redis

    task = _existing(session, task_id)
    if task.kind == TaskKind.ANNOTATION:
        raise Conflict("annotation tasks are not run by workers", field="task_id")
    if task.status not in (TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.QUEUED):
        raise Conflict(
            f"task {task_id} is {task.status.value}; only failed or dead tasks are retried"
        )
    session.close()
    try:
        done = _queue(settings, catalog).retry(task_id, by=user.name)
    except redis.RedisError as e:
        raise Unavailable(f"the job queue (Redis) cannot be reached: {e}") from None
    return TaskOut.model_validate(done)

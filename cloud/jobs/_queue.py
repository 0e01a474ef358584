"""The queue side: Redis keys, submitting, cancelling, retrying, listing tasks."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cloud.catalog.db import transaction
from cloud.catalog.models import TASK_TRANSITIONS, Task, TaskKind, TaskLog, TaskStatus
from cloud.core.config import Settings
from cloud.errors import InvalidInput, NotFound, Unavailable
from cloud.jobs._db import catalog_sessions
from cloud.jobs._errors import InvalidTransition

log = logging.getLogger("citybrain.jobs")

#: consumer group every worker joins
GROUP = "workers"
#: the stream keeps about this many entries (acknowledged ones are history only)
STREAM_MAXLEN = 100_000

# Moves due delayed retries into the stream, atomically (KEYS: delayed zset, stream).
_PROMOTE_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, m in ipairs(due) do
  redis.call('ZREM', KEYS[1], m)
  local sep = string.find(m, ':', 1, true)
  redis.call('XADD', KEYS[2], '*', 'task_id', string.sub(m, 1, sep - 1),
             'attempt', string.sub(m, sep + 1))
end
return #due
"""


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def check_transition(old: TaskStatus, new: TaskStatus) -> None:
    """Raise :class:`InvalidTransition` unless TASK_TRANSITIONS allows ``old -> new``."""
    if new not in TASK_TRANSITIONS[TaskStatus(old)]:
        raise InvalidTransition(
            f"task status cannot go from {TaskStatus(old).value!r} to {TaskStatus(new).value!r}",
            field="status",
        )


def transition(
    sessions: sessionmaker[Session],
    task_id: str,
    old: TaskStatus,
    new: TaskStatus,
    *,
    if_attempts: int | None = None,
    **values: Any,
) -> bool:
    """Conditionally move a task ``old -> new`` (and set ``values``).

    The UPDATE matches only while the row still has status ``old`` (and, when
    given, ``attempts == if_attempts``), so of two racing writers exactly one wins; the other
    gets False and changes nothing. This is what makes completion idempotent.
    """
    check_transition(old, new)
    stmt = update(Task).where(Task.id == task_id, Task.status == old)
    if if_attempts is not None:
        stmt = stmt.where(Task.attempts == if_attempts)
    if new.finished:
        values.setdefault("finished_at", utcnow())
    stmt = stmt.values(status=new, **values).execution_options(synchronize_session=False)
    with transaction(sessions) as s:
        return s.execute(stmt).rowcount == 1


def throttled_progress(
    sessions: sessionmaker[Session],
    task_id: str,
    *,
    min_interval_s: float = 0.5,
    then: Callable[[float, str], None] | None = None,
) -> Callable[[float, str], None]:
    """A progress callback for work run outside a worker (CLI imports, uploads):
    writes progress, message and heartbeat to the task row at most every
    ``min_interval_s``; ``then(fraction, message)`` runs after each write
    (e.g. to publish a live event)."""
    last = [float("-inf")]

    def record(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] < min_interval_s:
            return
        last[0] = now
        with transaction(sessions) as s:
            t = s.get(Task, task_id)
            if t is not None:
                t.progress, t.message, t.heartbeat_at = float(fraction), message, utcnow()
        if then is not None:
            then(fraction, message)

    return record


def task_event(
    task_id: str,
    kind: TaskKind | str,
    status: TaskStatus | str,
    progress: float,
    message: str,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON message published on the events channel (see package docstring)."""
    return {
        "type": "task",
        "task_id": task_id,
        "kind": TaskKind(kind).value,
        "status": TaskStatus(status).value,
        "progress": round(float(progress), 4),
        "message": message,
        "at": utcnow().isoformat(),
        **extra,
    }


@dataclass(frozen=True)
class QueueKeys:
    """Redis keys of one queue (all under ``settings.job_prefix``)."""

    prefix: str

    @property
    def stream(self) -> str:
        return f"{self.prefix}:stream"

    @property
    def delayed(self) -> str:
        return f"{self.prefix}:delayed"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    def cancel(self, task_id: str) -> str:
        return f"{self.prefix}:cancel:{task_id}"

    def all(self) -> list[str]:
        return [self.stream, self.delayed, self.dead]


class JobQueue:
    """Submit and manage tasks. The Task row is the truth; stream entries are
    wake-ups that carry ``task_id`` (and the attempt they were queued for)."""

    def __init__(
        self,
        settings: Settings,
        *,
        sessions: sessionmaker[Session] | None = None,
        redis_client: redis.Redis | None = None,
    ) -> None:
        self.settings = settings
        self.keys = QueueKeys(settings.job_prefix)
        self.sessions = sessions or catalog_sessions(settings)
        self.redis = redis_client or redis.Redis.from_url(settings.redis_url, decode_responses=True)
        self._promote = self.redis.register_script(_PROMOTE_LUA)

    # -- redis plumbing ----------------------------------------------------

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def wake(self, task_id: str, attempt: int) -> str:
        """Add a stream entry for ``task_id``; returns the entry id."""
        return self.redis.xadd(
            self.keys.stream,
            {"task_id": task_id, "attempt": str(attempt)},
            maxlen=STREAM_MAXLEN,
            approximate=True,
        )

    def wake_later(self, task_id: str, attempt: int, delay_s: float) -> None:
        self.redis.zadd(self.keys.delayed, {f"{task_id}:{attempt}": time.time() + delay_s})

    def promote_due(self) -> int:
        """Move delayed retries whose time has come into the stream."""
        return int(self._promote(keys=[self.keys.delayed, self.keys.stream], args=[time.time()]))

    def publish(self, event: dict[str, Any]) -> None:
        """Publish a live event; the record in the catalog is the durable copy."""
        try:
            self.redis.publish(self.settings.events_channel, json.dumps(event))
        except redis.RedisError as e:  # live view only: never fail a job for it
            log.warning("cannot publish event for task %s: %s", event.get("task_id"), e)

    def cancel_requested(self, task_id: str) -> bool:
        return bool(self.redis.exists(self.keys.cancel(task_id)))

    def clear(self) -> None:
        """Delete this queue's Redis keys (tests, resets)."""
        keys = self.keys.all() + list(self.redis.scan_iter(f"{self.keys.prefix}:cancel:*"))
        self.redis.delete(*keys)

    # -- public API --------------------------------------------------------

    def submit(
        self,
        kind: TaskKind | str,
        params: dict[str, Any] | None = None,
        *,
        title: str = "",
        dataset_id: int | None = None,
        created_by: str = "",
    ) -> Task:
        """Record a queued task and wake a worker for it."""
        try:
            kind = TaskKind(kind)
        except ValueError:
            known = ", ".join(k.value for k in TaskKind)
            raise InvalidInput(
                f"unknown task kind {kind!r} (known: {known})", field="kind"
            ) from None
        params = dict(params or {})
        try:
            json.dumps(params)
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"task params are not JSON: {e}", field="params") from None
        try:
            self.redis.ping()
            self.ensure_group()
        except redis.RedisError as e:
            raise Unavailable(
                f"job queue (Redis {self.settings.redis_url}) unavailable: {e}"
            ) from e
        task = Task(
            kind=kind,
            status=TaskStatus.QUEUED,
            title=title or kind.value,
            dataset_id=dataset_id,
            params=params,
            created_by=created_by,
            message="queued",
        )
        with transaction(self.sessions) as s:
            s.add(task)
        try:
            self.wake(task.id, 0)
        except redis.RedisError as e:
            transition(
                self.sessions,
                task.id,
                TaskStatus.QUEUED,
                TaskStatus.DEAD,
                error=f"could not enqueue: {e}",
                message="not enqueued; `citybrain task retry` re-queues it",
            )
            raise Unavailable(f"job queue unavailable, task {task.id} not enqueued: {e}") from e
        self.publish(task_event(task.id, kind, TaskStatus.QUEUED, 0.0, "queued"))
        return task

    def get(self, task_id: str) -> Task:
        with self.sessions() as s:
            task = s.get(Task, task_id)
            if task is None:
                raise NotFound(f"no task {task_id!r}", field="task_id")
            return task

    def logs(self, task_id: str, limit: int = 200) -> list[TaskLog]:
        with self.sessions() as s:
            rows = s.scalars(
                select(TaskLog)
                .where(TaskLog.task_id == task_id)
                .order_by(TaskLog.id.desc())
                .limit(limit)
            ).all()
            return list(reversed(rows))

    def list(
        self,
        *,
        status: Sequence[TaskStatus] | None = None,
        kind: TaskKind | None = None,
        limit: int = 50,
    ) -> list[Task]:
        stmt = select(Task).order_by(Task.created_at.desc()).limit(limit)
        if status:
            stmt = stmt.where(Task.status.in_(list(status)))
        if kind:
            stmt = stmt.where(Task.kind == kind)
        with self.sessions() as s:
            return list(s.scalars(stmt).all())

    def stuck(self, *, older_than_s: float | None = None) -> list[Task]:
        """Running tasks whose heartbeat stopped (their worker is gone or hung)."""
        limit = timedelta(seconds=older_than_s or self.settings.job_visibility_s)
        now = utcnow()
        with self.sessions() as s:
            running = s.scalars(select(Task).where(Task.status == TaskStatus.RUNNING)).all()
        return [
            t
            for t in running
            if (aware(t.heartbeat_at) or aware(t.started_at) or aware(t.created_at)) + limit < now
        ]

    def dead(self) -> list[Task]:
        """Dead-lettered tasks (too many failed attempts, or never enqueued)."""
        return self.list(status=[TaskStatus.DEAD], limit=1000)

    def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        """The newest entries of the dead-letter stream."""
        return [
            {"entry": entry_id, **fields}
            for entry_id, fields in self.redis.xrevrange(self.keys.dead, count=count)
        ]

    def cancel(self, task_id: str) -> Task:
        """Cancel a queued task now, or ask the worker running it to stop."""
        task = self.get(task_id)
        status = TaskStatus(task.status)
        if status == TaskStatus.QUEUED:
            if transition(
                self.sessions,
                task_id,
                TaskStatus.QUEUED,
                TaskStatus.CANCELLED,
                message="cancelled before it ran",
            ):
                self.publish(
                    task_event(task_id, task.kind, TaskStatus.CANCELLED, task.progress, "cancelled")
                )
                return self.get(task_id)
            return self.cancel(task_id)  # it started meanwhile
        if status == TaskStatus.RUNNING:
            self.redis.set(self.keys.cancel(task_id), "1", ex=7 * 86400)
            with transaction(self.sessions) as s:
                s.add(TaskLog(task_id=task_id, level="warning", message="cancellation requested"))
            self.publish(
                task_event(task_id, task.kind, status, task.progress, "cancellation requested")
            )
            return self.get(task_id)
        check_transition(status, TaskStatus.CANCELLED)  # raises for finished tasks
        raise AssertionError("unreachable")

    def retry(self, task_id: str, *, by: str = "") -> Task:
        """Re-queue a failed or dead task (attempts start again), or re-wake a queued one."""
        task = self.get(task_id)
        status = TaskStatus(task.status)
        if status != TaskStatus.QUEUED:
            check_transition(status, TaskStatus.QUEUED)
            if status == TaskStatus.RUNNING:
                raise InvalidTransition(
                    f"task {task_id} is running; cancel it or wait until it is stuck",
                    field="status",
                )
            if not transition(
                self.sessions,
                task_id,
                status,
                TaskStatus.QUEUED,
                attempts=0,
                error=None,
                finished_at=None,
                progress=0.0,
                message=f"re-queued{' by ' + by if by else ''}",
            ):
                raise InvalidTransition(f"task {task_id} changed status meanwhile; try again")
            with transaction(self.sessions) as s:
                s.add(TaskLog(task_id=task_id, level="info", message="re-queued for retry"))
        try:
            self.ensure_group()
            self.redis.delete(self.keys.cancel(task_id))
            self.wake(task_id, 0)
        except redis.RedisError as e:
            raise Unavailable(
                f"job queue unavailable; task {task_id} is queued but not woken: {e}"
            ) from e
        self.publish(task_event(task_id, task.kind, TaskStatus.QUEUED, 0.0, "re-queued"))
        return self.get(task_id)

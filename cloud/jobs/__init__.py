"""Jobs: long work (import, pretraining, training, mining, export) as catalog
tasks run by ``citybrain worker`` processes from a Redis Streams queue.

The ``Task`` row in the catalog is the truth; a stream entry ``{task_id,
attempt}`` is only a wake-up. Every status change is a conditional UPDATE that
TASK_TRANSITIONS allows and that matches ``status`` (and ``attempts``), so of
two racing writers exactly one wins. Hence a job is retried or resumed after a
worker dies, never lost, and never completed twice.

Flow::

    submit(kind, params)  ->  Task(queued)  ->  XADD <prefix>:stream
    worker: XREADGROUP (group "workers") | XAUTOCLAIM entries idle > job_visibility_s
        queued  -> running   (attempts + 1, heartbeat thread: XCLAIM JUSTID + heartbeat_at)
        handler(ctx) ok      -> succeeded, XACK
        JobFailed/InvalidInput/NotFound -> failed, XACK
        other exception      -> queued + ZADD <prefix>:delayed (backoff job_backoff_s * 2^(n-1)),
                                XACK; after job_max_attempts -> dead + XADD <prefix>:dead
        cancelled            -> cancelled
    a running task whose heartbeat is older than job_visibility_s (its worker died)
        -> queued again (or dead after job_max_attempts); the handler sees
           ``ctx.attempt`` and ``ctx.resume_state`` (its last ``ctx.checkpoint``).

Redis keys (``settings.job_prefix``, default ``citybrain:jobs``): ``:stream``,
``:delayed`` (zset ``task_id:attempt`` -> due time), ``:dead`` (dead-letter
stream ``{task_id, kind, attempts, error}``), ``:cancel:<task_id>``.

Live events are JSON messages on the Redis pub/sub channel
``settings.events_channel`` (default ``citybrain:events``)::

    {"type": "task", "task_id": str, "kind": str, "status": str,
     "progress": float (0..1), "message": str, "at": ISO-8601 UTC}
    {"type": "task_log", "task_id": str, "level": "debug|info|warning|error",
     "message": str, "at": ISO-8601 UTC}

Progress is written to the task record at most once a second (and at the
end); log lines go to ``TaskLog`` rows (warnings and errors at once).

Errors::

    cloud.errors.CitybrainError
    └── JobError
        ├── InvalidTransition   (also cloud.errors.Conflict) status change not allowed
        ├── UnknownHandler      no handler for a kind / bad ``module:attr`` spec
        └── JobFailed           raised by a handler: permanent failure, no retry
    JobStopped                  raised by ``ctx.check()``
    ├── JobCancelled            a user cancelled the task
    └── JobInterrupted          the worker stops, or another worker took the task over
"""

from __future__ import annotations

from cloud.jobs._context import CHECKPOINT_KEY, JobContext
from cloud.jobs._db import catalog_sessions
from cloud.jobs._errors import (
    InvalidTransition,
    JobCancelled,
    JobError,
    JobFailed,
    JobInterrupted,
    JobStopped,
    UnknownHandler,
)
from cloud.jobs._handlers import (
    Handler,
    import_handler,
    load_handlers,
    register_handler,
    registered_handlers,
)
from cloud.jobs._queue import (
    GROUP,
    JobQueue,
    QueueKeys,
    check_transition,
    task_event,
    throttled_progress,
    transition,
)
from cloud.jobs._worker import PERMANENT_ERRORS, Worker


def submit(
    kind,  # type: ignore[no-untyped-def]
    params=None,
    *,
    title: str = "",
    dataset_id: int | None = None,
    created_by: str = "",
    settings=None,
):
    """Record a queued task and enqueue it (``JobQueue(settings).submit``)."""
    from cloud.core.config import get_settings

    return JobQueue(settings or get_settings()).submit(
        kind, params, title=title, dataset_id=dataset_id, created_by=created_by
    )


__all__ = [
    "CHECKPOINT_KEY",
    "GROUP",
    "PERMANENT_ERRORS",
    "Handler",
    "InvalidTransition",
    "JobCancelled",
    "JobContext",
    "JobError",
    "JobFailed",
    "JobInterrupted",
    "JobQueue",
    "JobStopped",
    "QueueKeys",
    "UnknownHandler",
    "Worker",
    "catalog_sessions",
    "check_transition",
    "import_handler",
    "load_handlers",
    "register_handler",
    "registered_handlers",
    "submit",
    "task_event",
    "throttled_progress",
    "transition",
]

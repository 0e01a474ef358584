"""What a handler sees of its task: params, progress, logs, checkpoints, stop."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from cloud.catalog.db import transaction
from cloud.catalog.models import Task, TaskKind, TaskLog, TaskStatus
from cloud.core.config import Settings
from cloud.jobs._errors import JobCancelled, JobInterrupted
from cloud.jobs._queue import task_event, utcnow

if TYPE_CHECKING:
    from cloud.jobs._queue import JobQueue

#: key of ``Task.result`` holding the last checkpoint of an unfinished task
CHECKPOINT_KEY = "_checkpoint"
_LEVELS = ("debug", "info", "warning", "error")


class JobContext:
    """Handed to a handler: ``fn(ctx) -> dict | None``.

    Writes to the task record are fenced by ``(status == running, attempts ==
    ctx.attempt)``: once another worker has taken the task over (this one was
    presumed dead) or it was cancelled, nothing this context writes lands, and
    :meth:`should_stop` turns true.
    """

    def __init__(
        self,
        *,
        task_id: str,
        kind: TaskKind,
        params: dict[str, Any],
        attempt: int,
        resume_state: dict[str, Any] | None,
        settings: Settings,
        sessions: sessionmaker[Session],
        queue: JobQueue,
        worker_stopping: threading.Event,
        progress_interval_s: float = 1.0,
        event_interval_s: float = 0.2,
    ) -> None:
        self.task_id = task_id
        self.kind = kind
        self.params = params
        self.attempt = attempt
        self.resume_state = resume_state
        self.settings = settings
        self.sessions = sessions
        self._queue = queue
        self._worker_stopping = worker_stopping
        self._progress_interval = progress_interval_s
        self._event_interval = event_interval_s
        self._lock = threading.Lock()
        self._progress = 0.0
        self._message = ""
        self._dirty = False
        self._logs: list[TaskLog] = []
        self._last_flush = float("-inf")
        self._last_event = float("-inf")
        self._cancel = False
        self._last_cancel_poll = float("-inf")
        self.lease_lost = threading.Event()

    # -- reporting ---------------------------------------------------------

    @property
    def session_factory(self) -> sessionmaker[Session]:
        """Catalog sessions (``with ctx.session_factory() as s: ...``)."""
        return self.sessions

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress in 0..1; stored at most every second, published live."""
        fraction = min(1.0, max(0.0, float(fraction)))
        now = time.monotonic()
        with self._lock:
            self._progress = fraction
            if message:
                self._message = message
            self._dirty = True
            publish = now - self._last_event >= self._event_interval or fraction >= 1.0
            if publish:
                self._last_event = now
            flush = now - self._last_flush >= self._progress_interval
        if publish:
            self._queue.publish(
                task_event(
                    self.task_id, self.kind, TaskStatus.RUNNING, fraction, message or self._message
                )
            )
        if flush:
            self.flush()

    def log(self, message: str, level: str = "info") -> None:
        """Append a log line to the task (warnings and errors are written at once)."""
        level = level if level in _LEVELS else "info"
        with self._lock:
            self._logs.append(TaskLog(task_id=self.task_id, level=level, message=str(message)))
        self._queue.publish(
            {
                "type": "task_log",
                "task_id": self.task_id,
                "level": level,
                "message": str(message),
                "at": utcnow().isoformat(),
            }
        )
        if level in ("warning", "error"):
            self.flush()

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Durably record resumable state; a re-run gets it as ``ctx.resume_state``."""
        self.flush(checkpoint=dict(state))

    def flush(self, *, checkpoint: dict[str, Any] | None = None, heartbeat: bool = False) -> bool:
        """Write pending progress, logs (and a checkpoint) now. False if the lease is lost."""
        with self._lock:
            logs, self._logs = self._logs, []
            values: dict[str, Any] = {}
            if self._dirty:
                values.update(progress=self._progress, message=self._message)
                self._dirty = False
            self._last_flush = time.monotonic()
        if heartbeat:
            values["heartbeat_at"] = utcnow()
        ok = True
        with transaction(self.sessions) as s:
            for entry in logs:
                s.add(entry)
            if checkpoint is not None:
                task = s.get(Task, self.task_id)
                if (
                    task is None
                    or task.status != TaskStatus.RUNNING
                    or task.attempts != self.attempt
                ):
                    ok = False
                else:
                    task.result = {**(task.result or {}), CHECKPOINT_KEY: checkpoint}
            if values and ok:
                ok = (
                    s.execute(
                        update(Task)
                        .where(
                            Task.id == self.task_id,
                            Task.status == TaskStatus.RUNNING,
                            Task.attempts == self.attempt,
                        )
                        .values(**values)
                        .execution_options(synchronize_session=False)
                    ).rowcount
                    == 1
                )
        if not ok:
            self.lease_lost.set()
        return ok

    # -- stopping ----------------------------------------------------------

    def poll_cancel(self) -> bool:
        now = time.monotonic()
        if not self._cancel and now - self._last_cancel_poll >= 0.5:
            self._last_cancel_poll = now
            try:
                self._cancel = self._queue.cancel_requested(self.task_id)
            except Exception:  # Redis away: keep running, the next poll will tell
                pass
        return self._cancel

    @property
    def cancelled(self) -> bool:
        """A user asked to cancel this task."""
        return self.poll_cancel()

    def should_stop(self) -> bool:
        """True when the handler should stop soon: cancelled, worker shutting down,
        or another worker took the task over."""
        return self.poll_cancel() or self._worker_stopping.is_set() or self.lease_lost.is_set()

    def check(self) -> None:
        """Raise :class:`JobCancelled` / :class:`JobInterrupted` if the handler must stop."""
        if self.poll_cancel():
            raise JobCancelled(f"task {self.task_id} was cancelled")
        if self.lease_lost.is_set():
            raise JobInterrupted(f"task {self.task_id} was taken over by another worker")
        if self._worker_stopping.is_set():
            raise JobInterrupted("worker is shutting down")

"""``citybrain worker``: reads the stream, runs handlers, retries, dead-letters."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import redis
from sqlalchemy.orm import Session, sessionmaker

from cloud.catalog.db import transaction
from cloud.catalog.models import Task, TaskKind, TaskLog, TaskStatus
from cloud.core.config import Settings
from cloud.errors import InvalidInput, NotFound
from cloud.jobs._context import CHECKPOINT_KEY, JobContext
from cloud.jobs._errors import JobCancelled, JobFailed, JobInterrupted
from cloud.jobs._handlers import Handler, as_result, registered_handlers
from cloud.jobs._queue import GROUP, JobQueue, aware, task_event, transition, utcnow

log = logging.getLogger("citybrain.worker")

#: exceptions that fail a task at once instead of retrying it
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (JobFailed, InvalidInput, NotFound)
_MAX_BACKOFF_S = 3600.0


class Worker:
    """One worker process's loop (one job at a time; run several processes)."""

    def __init__(
        self,
        settings: Settings,
        handlers: Mapping[TaskKind | str, Handler] | None = None,
        *,
        name: str | None = None,
        sessions: sessionmaker[Session] | None = None,
        redis_client: redis.Redis | None = None,
        block_ms: int = 1000,
    ) -> None:
        self.settings = settings
        self.handlers = {TaskKind(k): v for k, v in (handlers or registered_handlers()).items()}
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.queue = JobQueue(settings, sessions=sessions, redis_client=redis_client)
        self.sessions = self.queue.sessions
        self.redis = self.queue.redis
        self.keys = self.queue.keys
        self.block_ms = block_ms
        self.stopping = threading.Event()
        self.visibility_ms = max(1, int(settings.job_visibility_s * 1000))
        self.processed = 0

    # -- loop --------------------------------------------------------------

    def stop(self) -> None:
        self.stopping.set()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self, *, max_jobs: int | None = None, idle_exit_s: float | None = None) -> int:
        """Process jobs until stopped (SIGTERM/SIGINT), ``max_jobs`` were run, or
        nothing arrived for ``idle_exit_s``. Returns how many entries it handled."""
        self._install_signals()
        log.info("worker %s on %s (prefix %s)", self.name, self.keys.stream, self.keys.prefix)
        self.queue.ensure_group()
        idle_since = time.monotonic()
        failures = 0
        while not self.stopping.is_set():
            if max_jobs is not None and self.processed >= max_jobs:
                break
            try:
                got = self.process_one()
                failures = 0
            except (redis.RedisError, OSError) as e:
                failures += 1
                log.warning("queue unavailable (%s); retrying", e)
                self.stopping.wait(min(10.0, 0.5 * 2**failures))
                continue
            except Exception:
                failures += 1
                log.exception("worker loop error; continuing")
                self.stopping.wait(min(10.0, 0.5 * 2**failures))
                continue
            if got:
                idle_since = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                break
        self._leave_group()
        return self.processed

    def _leave_group(self) -> None:
        try:
            pending = self.redis.xpending_range(
                self.keys.stream, GROUP, "-", "+", 1, consumername=self.name
            )
            if not pending:
                self.redis.xgroup_delconsumer(self.keys.stream, GROUP, self.name)
        except redis.RedisError:
            pass

    def process_one(self, block_ms: int | None = None) -> bool:
        """Handle one entry (a stale one first, else a new one). False if none came."""
        self.queue.promote_due()
        entry = self._claim_stale()
        if entry is None:
            resp = self.redis.xreadgroup(
                GROUP,
                self.name,
                {self.keys.stream: ">"},
                count=1,
                block=self.block_ms if block_ms is None else block_ms,
            )
            if not resp:
                return False
            _, entries = resp[0]
            if not entries:
                return False
            entry = entries[0]
        entry_id, fields = entry
        self.processed += 1
        self._handle_entry(entry_id, fields)
        return True

    def _claim_stale(self) -> tuple[str, dict[str, str]] | None:
        """An entry whose consumer stopped heartbeating for the visibility timeout."""
        _, claimed, *_ = self.redis.xautoclaim(
            self.keys.stream, GROUP, self.name, self.visibility_ms, start_id="0-0", count=1
        )
        for entry_id, fields in claimed:
            if fields:
                return entry_id, fields
            self.redis.xack(self.keys.stream, GROUP, entry_id)  # trimmed entry
        return None

    def _ack(self, entry_id: str) -> None:
        self.redis.xack(self.keys.stream, GROUP, entry_id)

    # -- one entry ---------------------------------------------------------

    def _handle_entry(self, entry_id: str, fields: dict[str, str]) -> None:
        task_id = fields.get("task_id", "")
        for _ in range(5):  # re-read after losing a race to another writer
            with self.sessions() as s:
                task = s.get(Task, task_id)
            if task is None:
                log.warning("entry %s names unknown task %r; dropped", entry_id, task_id)
                self._ack(entry_id)
                return
            status = TaskStatus(task.status)
            if status == TaskStatus.QUEUED:
                if self.queue.cancel_requested(task_id):
                    if self._finish(task, TaskStatus.QUEUED, TaskStatus.CANCELLED, "cancelled"):
                        self._ack(entry_id)
                        return
                    continue
                attempt = task.attempts + 1
                now = utcnow()
                if transition(
                    self.sessions,
                    task_id,
                    TaskStatus.QUEUED,
                    TaskStatus.RUNNING,
                    if_attempts=task.attempts,
                    attempts=attempt,
                    started_at=now,
                    heartbeat_at=now,
                    message=f"running (attempt {attempt}) on {self.name}",
                ):
                    self._run(task, attempt, entry_id)
                    return
                continue
            if status == TaskStatus.RUNNING:
                beat = aware(task.heartbeat_at) or aware(task.started_at) or utcnow()
                if beat + timedelta(seconds=self.settings.job_visibility_s) > utcnow():
                    return  # its worker is alive; this entry stays pending until it finishes
                if self._recover(task, entry_id):
                    return
                continue
            self._ack(entry_id)  # finished: a duplicate or stale wake-up
            return
        log.warning(
            "task %s kept changing while handling entry %s; left pending", task_id, entry_id
        )

    def _recover(self, task: Task, entry_id: str) -> bool:
        """The worker running ``task`` stopped heartbeating: retry, cancel or dead-letter."""
        why = f"worker lost during attempt {task.attempts} (no heartbeat)"
        self._log(task.id, why, "warning")
        if self.queue.cancel_requested(task.id):
            ok = self._finish(
                task, TaskStatus.RUNNING, TaskStatus.CANCELLED, "cancelled", task.attempts
            )
        elif task.attempts >= self.settings.job_max_attempts:
            ok = self._dead(task, task.attempts, why)
        else:
            ok = transition(
                self.sessions,
                task.id,
                TaskStatus.RUNNING,
                TaskStatus.QUEUED,
                if_attempts=task.attempts,
                error=why,
                message="retrying: " + why,
            )
            if ok:
                self.queue.wake(task.id, task.attempts)
                self.queue.publish(
                    task_event(task.id, task.kind, TaskStatus.QUEUED, task.progress, "retrying")
                )
        if ok:
            self._ack(entry_id)
        return ok

    def _run(self, task: Task, attempt: int, entry_id: str) -> None:
        kind = TaskKind(task.kind)
        self.queue.publish(task_event(task.id, kind, TaskStatus.RUNNING, task.progress, "running"))
        resume = (task.result or {}).get(CHECKPOINT_KEY)
        ctx = JobContext(
            task_id=task.id,
            kind=kind,
            params=dict(task.params or {}),
            attempt=attempt,
            resume_state=resume,
            settings=self.settings,
            sessions=self.sessions,
            queue=self.queue,
            worker_stopping=self.stopping,
        )
        self._log(
            task.id, f"attempt {attempt} started on {self.name}" + (" (resuming)" if resume else "")
        )
        beat = _Heartbeat(self, ctx, entry_id)
        beat.start()
        outcome: str
        error: BaseException | None = None
        result: dict[str, Any] = {}
        try:
            handler = self.handlers.get(kind)
            if handler is None:
                raise JobFailed(f"no handler for task kind {kind.value!r} in this worker")
            result = as_result(handler(ctx))
            outcome = "cancelled" if ctx.cancelled else "succeeded"
        except JobCancelled as e:
            outcome, error = "cancelled", e
        except JobInterrupted as e:
            outcome, error = "interrupted", e
        except PERMANENT_ERRORS as e:
            outcome, error = "failed", e
        except Exception as e:
            outcome, error = "error", e
        finally:
            beat.stop()
        try:
            ctx.flush()
        except Exception:
            log.exception("could not flush the last progress of task %s", task.id)
        if error is not None and outcome in ("failed", "error"):
            self._log(task.id, "".join(traceback.format_exception(error)).rstrip(), "error")
        done = self._conclude(task, attempt, outcome, error, result, ctx)
        if done or ctx.lease_lost.is_set():
            self._ack(entry_id)

    def _conclude(
        self,
        task: Task,
        attempt: int,
        outcome: str,
        error: BaseException | None,
        result: dict[str, Any],
        ctx: JobContext,
    ) -> bool:
        msg = f"{type(error).__name__}: {error}" if error is not None else ""
        if outcome == "succeeded":
            ok = transition(
                self.sessions,
                task.id,
                TaskStatus.RUNNING,
                TaskStatus.SUCCEEDED,
                if_attempts=attempt,
                result=result,
                progress=1.0,
                error=None,
                message="succeeded",
            )
            if ok:
                self._log(task.id, f"succeeded on attempt {attempt}")
                self.queue.publish(
                    task_event(task.id, task.kind, TaskStatus.SUCCEEDED, 1.0, "succeeded")
                )
            else:
                log.warning(
                    "task %s attempt %d finished after losing its lease; result dropped",
                    task.id,
                    attempt,
                )
            return ok
        if outcome == "cancelled":
            values = {"result": {**self._current_result(task.id), **result}} if result else {}
            return self._finish(
                task, TaskStatus.RUNNING, TaskStatus.CANCELLED, "cancelled", attempt, **values
            )
        if outcome == "interrupted":
            if ctx.lease_lost.is_set():
                return False
            # a clean shutdown: does not count as a failed attempt
            ok = transition(
                self.sessions,
                task.id,
                TaskStatus.RUNNING,
                TaskStatus.QUEUED,
                if_attempts=attempt,
                attempts=attempt - 1,
                message="interrupted: " + msg,
            )
            if ok:
                self.queue.wake(task.id, attempt - 1)
                self.queue.publish(
                    task_event(task.id, task.kind, TaskStatus.QUEUED, ctx._progress, "interrupted")
                )
            return ok
        if outcome == "failed":
            return self._finish(
                task, TaskStatus.RUNNING, TaskStatus.FAILED, msg, attempt, error=msg
            )
        # a retryable error
        if attempt >= self.settings.job_max_attempts:
            return self._dead(task, attempt, msg)
        delay = min(_MAX_BACKOFF_S, self.settings.job_backoff_s * 2 ** (attempt - 1))
        ok = transition(
            self.sessions,
            task.id,
            TaskStatus.RUNNING,
            TaskStatus.QUEUED,
            if_attempts=attempt,
            error=msg,
            message=f"attempt {attempt} failed; retry in {delay:.1f}s",
        )
        if ok:
            self._log(
                task.id, f"attempt {attempt} failed ({msg}); retry in {delay:.1f}s", "warning"
            )
            self.queue.wake_later(task.id, attempt, delay)
            self.queue.publish(
                task_event(
                    task.id, task.kind, TaskStatus.QUEUED, ctx._progress, f"retry in {delay:.1f}s"
                )
            )
        return ok

    def _current_result(self, task_id: str) -> dict[str, Any]:
        with self.sessions() as s:
            t = s.get(Task, task_id)
            return dict(t.result or {}) if t else {}

    def _finish(
        self,
        task: Task,
        old: TaskStatus,
        new: TaskStatus,
        message: str,
        attempt: int | None = None,
        **values: Any,
    ) -> bool:
        ok = transition(
            self.sessions, task.id, old, new, if_attempts=attempt, message=message, **values
        )
        if ok:
            self._log(
                task.id, f"{new.value}: {message}", "info" if new != TaskStatus.FAILED else "error"
            )
            self.redis.delete(self.keys.cancel(task.id))
            self.queue.publish(task_event(task.id, task.kind, new, task.progress, message))
        return ok

    def _dead(self, task: Task, attempt: int, why: str) -> bool:
        ok = transition(
            self.sessions,
            task.id,
            TaskStatus.RUNNING,
            TaskStatus.DEAD,
            if_attempts=attempt,
            error=why,
            message=f"dead-lettered after {attempt} attempts",
        )
        if ok:
            self._log(task.id, f"dead-lettered after {attempt} attempts: {why}", "error")
            self.redis.xadd(
                self.keys.dead,
                {
                    "task_id": task.id,
                    "kind": TaskKind(task.kind).value,
                    "attempts": str(attempt),
                    "error": why[:2000],
                },
                maxlen=100_000,
                approximate=True,
            )
            self.queue.publish(
                task_event(task.id, task.kind, TaskStatus.DEAD, task.progress, why[:500])
            )
        return ok

    def _log(self, task_id: str, message: str, level: str = "info") -> None:
        getattr(log, "warning" if level == "warning" else "error" if level == "error" else "info")(
            "task %s: %s", task_id, message.splitlines()[0] if message else ""
        )
        try:
            with transaction(self.sessions) as s:
                s.add(TaskLog(task_id=task_id, level=level, message=message))
        except Exception:
            log.exception("could not write a log line of task %s", task_id)


class _Heartbeat(threading.Thread):
    """Keeps the running entry ours (XCLAIM JUSTID resets its idle time), refreshes
    ``heartbeat_at``, flushes progress and notices cancellation or a lost lease."""

    def __init__(self, worker: Worker, ctx: JobContext, entry_id: str) -> None:
        super().__init__(name=f"heartbeat-{ctx.task_id}", daemon=True)
        self.worker = worker
        self.ctx = ctx
        self.entry_id = entry_id
        self.interval = max(0.1, min(worker.settings.job_visibility_s / 4, 10.0))
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)

    def run(self) -> None:
        w = self.worker
        while not self._stop_event.wait(self.interval):
            try:
                w.redis.xclaim(w.keys.stream, GROUP, w.name, 0, [self.entry_id], justid=True)
                if not self.ctx.flush(heartbeat=True):
                    log.warning("task %s: lease lost (taken over or cancelled)", self.ctx.task_id)
                self.ctx.poll_cancel()
            except Exception as e:  # keep beating; the next beat may get through
                log.warning("heartbeat of task %s failed: %s", self.ctx.task_id, e)

"""Job system pieces without Redis: the transition table, fenced (idempotent)
status changes, the handler context, handler loading, event shape."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from cloud.catalog.db import transaction
from cloud.catalog.models import TASK_TRANSITIONS, Task, TaskKind, TaskStatus
from cloud.core.config import Settings
from cloud.errors import InvalidInput
from cloud.jobs import (
    CHECKPOINT_KEY,
    InvalidTransition,
    JobCancelled,
    JobContext,
    JobInterrupted,
    JobQueue,
    UnknownHandler,
    catalog_sessions,
    check_transition,
    load_handlers,
    task_event,
    transition,
)
from cloud.jobs._handlers import as_result


class FakeQueue:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.cancel = False

    def publish(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def cancel_requested(self, task_id: str) -> bool:
        return self.cancel


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/15")


@pytest.fixture
def sessions(settings: Settings):  # type: ignore[no-untyped-def]
    return catalog_sessions(settings)


def _task(sessions, status: TaskStatus = TaskStatus.RUNNING, attempts: int = 1) -> str:  # type: ignore[no-untyped-def]
    with transaction(sessions) as s:
        t = Task(kind=TaskKind.EXPORT, status=status, attempts=attempts, params={"a": 1})
        s.add(t)
    return t.id


def test_check_transition_follows_the_table_exactly() -> None:
    for old in TaskStatus:
        for new in TaskStatus:
            if new in TASK_TRANSITIONS[old]:
                check_transition(old, new)
            else:
                with pytest.raises(InvalidTransition, match=f"from '{old.value}' to '{new.value}'"):
                    check_transition(old, new)


def test_completion_is_fenced_and_happens_once(sessions) -> None:  # type: ignore[no-untyped-def]
    tid = _task(sessions)
    # a worker from an older attempt cannot finish it
    assert not transition(sessions, tid, TaskStatus.RUNNING, TaskStatus.SUCCEEDED, if_attempts=0)
    assert transition(
        sessions, tid, TaskStatus.RUNNING, TaskStatus.SUCCEEDED, if_attempts=1, result={"r": 1}
    )
    # a second completion is a no-op, not a second success
    assert not transition(
        sessions, tid, TaskStatus.RUNNING, TaskStatus.SUCCEEDED, if_attempts=1, result={"r": 2}
    )
    with sessions() as s:
        t = s.get(Task, tid)
        assert t.status == TaskStatus.SUCCEEDED and t.result == {"r": 1}
        assert t.finished_at is not None
    with pytest.raises(InvalidTransition):
        transition(sessions, tid, TaskStatus.SUCCEEDED, TaskStatus.QUEUED)


def test_racing_finishers_one_wins(sessions) -> None:  # type: ignore[no-untyped-def]
    tid = _task(sessions)
    wins: list[bool] = []
    barrier = threading.Barrier(4)

    def finish(new: TaskStatus) -> None:
        barrier.wait()
        wins.append(transition(sessions, tid, TaskStatus.RUNNING, new, if_attempts=1))

    threads = [
        threading.Thread(target=finish, args=(s,))
        for s in (TaskStatus.SUCCEEDED, TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.DEAD)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, False, False, True]


def _ctx(settings, sessions, tid: str, queue: FakeQueue, attempt: int = 1) -> JobContext:  # type: ignore[no-untyped-def]
    return JobContext(
        task_id=tid,
        kind=TaskKind.EXPORT,
        params={"a": 1},
        attempt=attempt,
        resume_state=None,
        settings=settings,
        sessions=sessions,
        queue=queue,  # type: ignore[arg-type]
        worker_stopping=threading.Event(),
        progress_interval_s=3600,
        event_interval_s=0,
    )


def test_context_progress_logs_checkpoint(settings, sessions) -> None:  # type: ignore[no-untyped-def]
    tid = _task(sessions)
    q = FakeQueue()
    ctx = _ctx(settings, sessions, tid, q)
    ctx.progress(0.1, "first")  # first call flushes
    ctx.progress(0.4, "second")  # throttled: not yet in the DB
    ctx.progress(7, "clamped")
    ctx.log("hello")
    with sessions() as s:
        assert s.get(Task, tid).progress == pytest.approx(0.1)
    ctx.checkpoint({"next": 3})
    with sessions() as s:
        t = s.get(Task, tid)
        assert t.progress == 1.0 and t.message == "clamped"
        assert t.result[CHECKPOINT_KEY] == {"next": 3}
        assert [entry.message for entry in t.logs] == ["hello"]
    assert [e["progress"] for e in q.events if e["type"] == "task"] == [0.1, 0.4, 1.0]
    assert q.events[-1] == {**q.events[-1], "type": "task_log", "message": "hello"}
    assert not ctx.should_stop()
    ctx.check()


def test_context_notices_lost_lease_and_cancel(settings, sessions) -> None:  # type: ignore[no-untyped-def]
    tid = _task(sessions, attempts=2)
    q = FakeQueue()
    stale = _ctx(settings, sessions, tid, q, attempt=1)  # a worker of an older attempt
    stale.checkpoint({"next": 9})
    assert stale.should_stop()
    with pytest.raises(JobInterrupted):
        stale.check()
    with sessions() as s:
        assert CHECKPOINT_KEY not in s.get(Task, tid).result
    current = _ctx(settings, sessions, tid, q, attempt=2)
    q.cancel = True
    assert current.should_stop()
    with pytest.raises(JobCancelled):
        current.check()


def test_load_handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_handlers_mod.py").write_text(
        "def h(ctx):\n    return {'ok': True}\n"
        "HANDLERS = {'training': h}\n"
        "def make():\n    return {'mining': h}\n"
        "BAD = {'nope': h}\n"
        "NOT_A_MAP = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    table = load_handlers("my_handlers_mod:HANDLERS")
    assert TaskKind.TRAINING in table and TaskKind.IMPORT in table  # built-in import kept
    assert TaskKind.MINING in load_handlers("my_handlers_mod:make")
    with pytest.raises(UnknownHandler, match="unknown task kind 'nope'"):
        load_handlers("my_handlers_mod:BAD")
    with pytest.raises(UnknownHandler, match="not a mapping"):
        load_handlers("my_handlers_mod:NOT_A_MAP")
    with pytest.raises(UnknownHandler, match="module:attr"):
        load_handlers("my_handlers_mod")
    with pytest.raises(UnknownHandler, match="cannot load"):
        load_handlers("my_handlers_mod:MISSING")


def test_as_result_and_event_shape() -> None:
    from dataclasses import dataclass

    from pydantic import BaseModel

    class R(BaseModel):
        n: int

    @dataclass
    class D:
        p: Path

    assert as_result(None) == {}
    assert as_result(R(n=3)) == {"n": 3}
    assert as_result(D(Path("/x"))) == {"p": "/x"}
    assert as_result({"a": 1}) == {"a": 1}
    assert as_result(5) == {"value": "5"}
    e = task_event("t1", "import", "running", 0.123456, "msg")
    assert {k: e[k] for k in ("type", "task_id", "kind", "status", "progress", "message")} == {
        "type": "task",
        "task_id": "t1",
        "kind": "import",
        "status": "running",
        "progress": 0.1235,
        "message": "msg",
    }


def test_submit_rejects_bad_kind_and_params(settings) -> None:  # type: ignore[no-untyped-def]
    q = JobQueue(settings)
    with pytest.raises(InvalidInput, match="unknown task kind 'bake'") as e:
        q.submit("bake", {})
    assert e.value.field == "kind"
    with pytest.raises(InvalidInput, match="not JSON") as e:
        q.submit(TaskKind.EXPORT, {"x": object()})
    assert e.value.field == "params"


def test_import_handler_requires_params(settings, sessions) -> None:  # type: ignore[no-untyped-def]
    from cloud.jobs import JobFailed, import_handler

    tid = _task(sessions)
    ctx = _ctx(settings, sessions, tid, FakeQueue())
    ctx.params = {"dataset": "d"}
    with pytest.raises(JobFailed, match="'path'"):
        import_handler(ctx)

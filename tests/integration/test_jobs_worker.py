"""The job system against a real Redis and real ``citybrain worker`` processes:
success, retry then success, dead-letter, a SIGKILLed worker's job finished
exactly once by another, a paused (zombie) worker whose late completion is
refused, cancellation, stuck jobs in ``citybrain task dead``.

The handlers below are loaded by the worker subprocesses through
``--handlers tests.integration.test_jobs_worker:HANDLERS``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.catalog.models import TaskKind, TaskStatus
from tests.conftest import REPO

# --------------------------------------------------------------------------
# handlers run by the worker subprocesses (kind "export")
# --------------------------------------------------------------------------


def _note(params: dict[str, Any], line: str) -> None:
    if params.get("marker"):
        with open(params["marker"], "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def _test_handler(ctx: Any) -> dict[str, Any]:
    from cloud.jobs import JobFailed

    p = ctx.params
    mode = p.get("mode", "ok")
    _note(p, f"start attempt={ctx.attempt} pid={os.getpid()}")
    if mode == "ok":
        ctx.progress(0.5, "half way")
        ctx.log("computed")
        return {"value": p.get("x", 0) * 2}
    if mode == "fail_times":
        if ctx.attempt <= p["n"]:
            raise RuntimeError(f"planned failure on attempt {ctx.attempt}")
        return {"attempt": ctx.attempt}
    if mode == "always_fail":
        raise RuntimeError("this job always fails")
    if mode == "permanent":
        raise JobFailed("bad params: nothing to do")
    if mode == "steps":
        start = (ctx.resume_state or {}).get("next", 0)
        for i in range(start, p["n"]):
            ctx.check()
            time.sleep(p.get("step_s", 0.2))
            _note(p, f"step {i} attempt={ctx.attempt}")
            ctx.checkpoint({"next": i + 1})
            ctx.progress((i + 1) / p["n"], f"step {i + 1}/{p['n']}")
        ctx.check()
        _note(p, f"done attempt={ctx.attempt}")
        return {"steps": p["n"], "resumed_from": start, "attempt": ctx.attempt}
    if mode == "wait_cancel":
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ctx.check()
            ctx.progress(0.1, "waiting to be cancelled")
            time.sleep(0.05)
        return {"cancelled": False}
    raise JobFailed(f"unknown mode {mode!r}")


HANDLERS = {"export": _test_handler}

# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

pytestmark = pytest.mark.integration


class Env:
    def __init__(self, tmp: Path, redis_url: str) -> None:
        self.prefix = f"cbtest:jobs:{uuid.uuid4().hex[:10]}"
        self.env = dict(os.environ)
        self.env.update(
            CITYBRAIN_DATA_DIR=str(tmp / "data"),
            CITYBRAIN_REDIS_URL=redis_url,
            CITYBRAIN_JOB_PREFIX=self.prefix,
            CITYBRAIN_EVENTS_CHANNEL=f"{self.prefix}:events",
            CITYBRAIN_JOB_VISIBILITY_S="1.5",
            CITYBRAIN_JOB_BACKOFF_S="0.2",
            CITYBRAIN_JOB_MAX_ATTEMPTS="3",
            PYTHONPATH=str(REPO),
        )
        self.env.pop("CITYBRAIN_DB_URL", None)
        from cloud.core.config import Settings
        from cloud.jobs import JobQueue

        saved = {k: os.environ.get(k) for k in self.env if k.startswith("CITYBRAIN_")}
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("CITYBRAIN_")})
        try:
            self.settings = Settings()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.queue = JobQueue(self.settings)  # migrates the catalog before workers start
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = tmp / "logs"
        self.logs.mkdir()

    def worker(self, name: str) -> subprocess.Popen[bytes]:
        cmd = [
            str(Path(sys.executable).with_name("citybrain")),
            "worker",
            "--handlers",
            "tests.integration.test_jobs_worker:HANDLERS",
            "--name",
            name,
            "--log-level",
            "warning",
        ]
        out = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.procs.append(p)
        return p

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(Path(sys.executable).with_name("citybrain")), *args]
        return subprocess.run(
            cmd, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=60
        )

    def submit(self, mode: str, **params: Any) -> str:
        return self.queue.submit(TaskKind.EXPORT, {"mode": mode, **params}, title=mode).id

    def wait(self, task_id: str, pred: Callable[[Any], bool], timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            t = self.queue.get(task_id)
            if pred(t):
                return t
            if time.monotonic() > deadline:
                logs = {p.name: p.read_text()[-2000:] for p in self.logs.iterdir()}
                raise AssertionError(f"task {task_id} stuck at {t.status} {t.message!r}: {logs}")
            time.sleep(0.1)

    def finished(self, task_id: str, timeout: float = 30) -> Any:
        return self.wait(task_id, lambda t: TaskStatus(t.status).finished, timeout)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.queue.clear()


@pytest.fixture
def env(tmp_path: Path, redis_url: str) -> Iterator[Env]:
    e = Env(tmp_path, redis_url)
    yield e
    e.close()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------


def test_success_retry_deadletter_and_permanent_failure(env: Env) -> None:
    events: list[dict[str, Any]] = []
    pubsub = env.queue.redis.pubsub()
    pubsub.subscribe(env.settings.events_channel)

    listening = threading.Event()
    listening.set()

    def listen() -> None:
        while listening.is_set():
            m = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if m and m["type"] == "message":
                events.append(json.loads(m["data"]))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    env.worker("w1")
    env.worker("w2")
    ok = env.submit("ok", x=21)
    flaky = env.submit("fail_times", n=2)
    doomed = env.submit("always_fail")
    bad = env.submit("permanent")

    t = env.finished(ok)
    assert t.status == TaskStatus.SUCCEEDED and t.result == {"value": 42} and t.attempts == 1
    assert t.progress == 1.0

    t = env.finished(flaky)
    assert t.status == TaskStatus.SUCCEEDED and t.attempts == 3 and t.result == {"attempt": 3}
    assert any("planned failure on attempt 1" in e.message for e in env.queue.logs(flaky))

    t = env.finished(doomed)
    assert t.status == TaskStatus.DEAD and t.attempts == 3
    assert "this job always fails" in (t.error or "")
    assert [d["task_id"] for d in env.queue.dead_letters()] == [doomed]

    t = env.finished(bad)
    assert t.status == TaskStatus.FAILED and t.attempts == 1
    assert "bad params" in (t.error or "")

    # the dead task is listed, and a manual retry runs it again (and it dies again)
    r = env.cli("task", "dead")
    assert r.returncode == 0 and doomed in r.stdout and ok not in r.stdout, r.stderr
    r = env.cli("task", "retry", doomed)
    assert r.returncode == 0, r.stderr
    env.wait(doomed, lambda t: t.status == TaskStatus.DEAD and len(env.queue.dead_letters()) == 2)

    # finished tasks are refused transitions the table does not allow
    r = env.cli("task", "retry", ok)
    assert r.returncode == 2 and "succeeded" in r.stderr and "queued" in r.stderr
    r = env.cli("task", "show", "no-such-task")
    assert r.returncode == 2 and "no task" in r.stderr
    r = env.cli("task", "list", "--status", "bogus")
    assert r.returncode == 2 and "--status" in r.stderr

    listed = [json.loads(line) for line in env.cli("task", "list", "--json").stdout.splitlines()]
    assert {r["id"]: r["status"] for r in listed} == {
        ok: "succeeded",
        flaky: "succeeded",
        doomed: "dead",
        bad: "failed",
    }
    shown = json.loads(env.cli("task", "show", ok, "--json").stdout)
    assert shown["result"] == {"value": 42}
    assert any(entry["message"] == "computed" for entry in shown["logs"])

    # live events on the channel carry the documented shape
    time.sleep(0.3)
    listening.clear()
    listener.join()
    pubsub.close()
    mine = [e for e in events if e.get("task_id") == ok and e["type"] == "task"]
    assert {e["status"] for e in mine} >= {"queued", "running", "succeeded"}
    for e in mine:
        assert set(e) >= {"type", "task_id", "kind", "status", "progress", "message"}
        assert e["kind"] == "export"
    assert any(e["type"] == "task_log" and e["message"] == "computed" for e in events)


def test_sigkill_mid_job_is_resumed_by_another_worker_exactly_once(
    env: Env, tmp_path: Path
) -> None:
    marker = tmp_path / "marker.txt"
    first = env.worker("victim")
    task_id = env.submit("steps", n=12, step_s=0.25, marker=str(marker))
    env.wait(task_id, lambda t: t.status == TaskStatus.RUNNING and t.progress >= 0.25)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = env.queue.get(task_id)
    assert killed_at.status == TaskStatus.RUNNING and killed_at.attempts == 1

    env.worker("rescuer")
    t = env.finished(task_id, timeout=60)
    assert t.status == TaskStatus.SUCCEEDED
    assert t.attempts == 2
    assert t.result["attempt"] == 2 and t.result["steps"] == 12
    assert t.result["resumed_from"] >= 3  # resumed from the checkpoint, not from scratch
    lines = _lines(marker)
    assert [line for line in lines if line.startswith("done")] == ["done attempt=2"]
    steps_done = {line.split()[1] for line in lines if line.startswith("step")}
    assert steps_done == {str(i) for i in range(12)}
    succeeded_logs = [e for e in env.queue.logs(task_id) if e.message.startswith("succeeded")]
    assert len(succeeded_logs) == 1
    assert any("worker lost" in e.message for e in env.queue.logs(task_id))


def test_paused_worker_cannot_complete_a_job_taken_over(env: Env, tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    zombie = env.worker("zombie")
    task_id = env.submit("steps", n=8, step_s=0.2, marker=str(marker))
    env.wait(task_id, lambda t: t.status == TaskStatus.RUNNING and t.progress > 0)
    zombie.send_signal(signal.SIGSTOP)
    try:
        # stuck: running without heartbeat, visible in `task dead`
        env.wait(task_id, lambda t: len(env.queue.stuck()) == 1, timeout=20)
        r = env.cli("task", "dead")
        assert r.returncode == 0 and task_id in r.stdout and "stuck" in r.stdout
        env.worker("rescuer")
        t = env.finished(task_id, timeout=60)
    finally:
        zombie.send_signal(signal.SIGCONT)
    assert t.status == TaskStatus.SUCCEEDED and t.result["attempt"] == 2
    time.sleep(2.0)  # let the zombie wake up and try to finish
    t2 = env.queue.get(task_id)
    assert t2.status == TaskStatus.SUCCEEDED and t2.result == t.result and t2.attempts == 2
    assert [line for line in _lines(marker) if line.startswith("done")] == ["done attempt=2"]
    assert len([e for e in env.queue.logs(task_id) if e.message.startswith("succeeded")]) == 1


def test_cancel_queued_and_running(env: Env) -> None:
    queued = env.submit("ok", x=1)
    r = env.cli("task", "cancel", queued)
    assert r.returncode == 0 and "cancelled" in r.stdout, r.stderr
    running = env.submit("wait_cancel")
    env.worker("w")
    env.wait(running, lambda t: t.status == TaskStatus.RUNNING)
    r = env.cli("task", "cancel", running)
    assert r.returncode == 0 and "cancellation requested" in r.stdout, r.stderr
    t = env.finished(running)
    assert t.status == TaskStatus.CANCELLED and t.attempts == 1
    t = env.queue.get(queued)
    assert t.status == TaskStatus.CANCELLED and t.attempts == 0  # never ran
    r = env.cli("task", "cancel", queued)
    assert r.returncode == 2 and "cancelled" in r.stderr


def test_worker_rejects_bad_handler_spec(env: Env) -> None:
    r = env.cli("worker", "--handlers", "no_such_module_xyz:HANDLERS")
    assert r.returncode == 2 and "no_such_module_xyz" in r.stderr
    r = env.cli("worker", "--handlers", "justamodule")
    assert r.returncode == 2 and "module:attr" in r.stderr


def test_builtin_import_handler_runs_an_import_task(env: Env, tmp_path: Path) -> None:
    from PIL import Image

    from cloud.jobs import Worker

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 24), (i * 80, 10, 200 - i * 50)).save(folder / f"im{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    good = env.queue.submit(
        TaskKind.IMPORT, {"path": str(folder), "dataset": "street"}, created_by="tester"
    )
    missing = env.queue.submit(
        TaskKind.IMPORT, {"path": str(tmp_path / "nope"), "dataset": "street"}
    )
    Worker(env.settings, block_ms=200).run(idle_exit_s=1.0)
    t = env.queue.get(good.id)
    assert t.status == TaskStatus.SUCCEEDED, (t.error, t.message)
    assert t.progress == 1.0
    assert t.result["added"] == 3 and t.result["task_id"] == good.id
    assert [s["file"].endswith("broken.jpg") for s in t.result["skipped"]] == [True]
    t = env.queue.get(missing.id)
    assert t.status == TaskStatus.FAILED and t.attempts == 1  # bad input: no retry
    assert "nope" in (t.error or "")

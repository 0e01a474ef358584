"""``citybrain task``: list, inspect, retry and cancel tasks; see dead/stuck jobs."""

from __future__ import annotations

import json
from typing import Any

import typer

app = typer.Typer(help="Tasks (jobs): list, show, retry, cancel, dead-lettered and stuck.")


def _queue():  # type: ignore[no-untyped-def]
    from cloud.core.config import get_settings
    from cloud.jobs import JobQueue

    return JobQueue(get_settings())


def _row(t: Any) -> dict[str, Any]:
    return {
        "id": t.id,
        "kind": getattr(t.kind, "value", t.kind),
        "status": getattr(t.status, "value", t.status),
        "attempts": t.attempts,
        "progress": round(t.progress or 0.0, 3),
        "title": t.title,
        "message": t.message,
        "error": t.error,
        "dataset_id": t.dataset_id,
        "created_by": t.created_by,
        "created_at": t.created_at.isoformat() if t.created_at else None,
        "started_at": t.started_at.isoformat() if t.started_at else None,
        "finished_at": t.finished_at.isoformat() if t.finished_at else None,
        "heartbeat_at": t.heartbeat_at.isoformat() if t.heartbeat_at else None,
    }


def _print_table(rows: list[dict[str, Any]], extra: str | None = None) -> None:
    if not rows:
        typer.echo("no tasks")
        return
    typer.echo(f"{'ID':32}  {'KIND':11} {'STATUS':9} {'TRY':>3} {'PROG':>5}  TITLE")
    for r in rows:
        line = (
            f"{r['id']:32}  {r['kind']:11} {r['status']:9} {r['attempts']:>3} "
            f"{r['progress'] * 100:>4.0f}%  {r['title']}"
        )
        if extra and r.get(extra):
            line += f"  [{r[extra]}]"
        typer.echo(line)


@app.command("list")
def list_tasks(
    status: list[str] = typer.Option([], "--status", "-s", help="filter (repeatable)"),
    kind: str | None = typer.Option(None, "--kind", "-k", help="filter by kind"),
    limit: int = typer.Option(50, "--limit", min=1, max=10000),
    as_json: bool = typer.Option(False, "--json", help="JSON lines"),
) -> None:
    """The newest tasks."""
    from cloud.catalog.models import TaskKind, TaskStatus
    from cloud.errors import InvalidInput

    try:
        statuses = [TaskStatus(s) for s in status]
    except ValueError as e:
        raise InvalidInput(
            f"{e}; known: {', '.join(s.value for s in TaskStatus)}", field="--status"
        ) from None
    try:
        k = TaskKind(kind) if kind else None
    except ValueError as e:
        raise InvalidInput(
            f"{e}; known: {', '.join(s.value for s in TaskKind)}", field="--kind"
        ) from None
    rows = [_row(t) for t in _queue().list(status=statuses or None, kind=k, limit=limit)]
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r))
    else:
        _print_table(rows)


@app.command("show")
def show(
    task_id: str = typer.Argument(..., help="task id"),
    logs: int = typer.Option(50, "--logs", min=0, help="how many log lines"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One task with its params, result, error and latest log lines."""
    q = _queue()
    t = q.get(task_id)
    doc = _row(t) | {"params": t.params, "result": t.result}
    lines = q.logs(task_id, limit=logs) if logs else []
    doc["logs"] = [
        {"at": entry.at.isoformat(), "level": entry.level, "message": entry.message}
        for entry in lines
    ]
    if as_json:
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    for key in ("id", "kind", "status", "attempts", "title", "message", "error", "created_by"):
        typer.echo(f"{key:>12}: {doc[key]}")
    typer.echo(f"{'progress':>12}: {doc['progress'] * 100:.0f}%")
    for key in ("created_at", "started_at", "heartbeat_at", "finished_at"):
        typer.echo(f"{key:>12}: {doc[key] or '-'}")
    typer.echo(f"{'params':>12}: {json.dumps(doc['params'], default=str)}")
    typer.echo(f"{'result':>12}: {json.dumps(doc['result'], default=str)}")
    for entry in doc["logs"]:
        typer.echo(f"  {entry['at']} {entry['level']:7} {entry['message']}")


@app.command("retry")
def retry(task_id: str = typer.Argument(..., help="task id")) -> None:
    """Re-queue a failed or dead-lettered task (or re-wake a queued one)."""
    t = _queue().retry(task_id, by="cli")
    typer.echo(f"{t.id} {getattr(t.status, 'value', t.status)}")


@app.command("cancel")
def cancel(task_id: str = typer.Argument(..., help="task id")) -> None:
    """Cancel a queued task, or ask the worker running it to stop."""
    t = _queue().cancel(task_id)
    status = getattr(t.status, "value", t.status)
    typer.echo(f"{t.id} {status}{' (cancellation requested)' if status == 'running' else ''}")


@app.command("dead")
def dead(
    stuck_after: float | None = typer.Option(
        None, "--stuck-after", min=0, help="seconds without heartbeat (default job_visibility_s)"
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Dead-lettered tasks and stuck ones (running, no heartbeat)."""
    q = _queue()
    rows = [_row(t) | {"why": "dead"} for t in q.dead()]
    rows += [_row(t) | {"why": "stuck"} for t in q.stuck(older_than_s=stuck_after)]
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r))
        return
    if not rows:
        typer.echo("no dead or stuck tasks")
        return
    for r in rows:
        r["note"] = f"{r['why']}: {r['error'] or r['message'] or ''}"[:120]
    _print_table(rows, extra="note")

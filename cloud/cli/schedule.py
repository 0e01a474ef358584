"""``citybrain schedule``: solve, check and generate offline placement instances.

Import-light on purpose: only typer at module level, the scheduler inside the
commands (no torch, ray or fastapi on this path), so a city-scale plan is
computed within seconds for the whole process.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import typer

from cloud.errors import InvalidInput

app = typer.Typer(
    name="schedule",
    help="Place algorithms on edge devices: solve, check and generate instances.",
    no_args_is_help=True,
)


def _write_atomic(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise InvalidInput(f"{path}: already exists (pass --force to replace it)", field="--out")
    if path.is_dir():
        raise InvalidInput(f"{path}: is a directory", field="--out")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidInput(f"{parent}: no such directory", field="--out")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@app.command()
def solve(
    instance: Path = typer.Option(
        ..., "--instance", help="citybrain.schedule-instance/1 JSON file"
    ),
    out: Path = typer.Option(..., "--out", help="where to write the citybrain.schedule-plan/1"),
    time_limit: float = typer.Option(4.0, "--time-limit", help="search time limit in seconds"),
    solver: str = typer.Option("auto", "--solver", help="auto | milp | heuristic | baseline"),
    previous: Path | None = typer.Option(
        None, "--previous", help="previous plan: re-plan keeping what can stay"
    ),
    churn_weight: float = typer.Option(
        1.0, "--churn-weight", help="penalty (priority points) per previous assignment moved"
    ),
    force: bool = typer.Option(False, "--force", help="replace --out if it exists"),
) -> None:
    """Compute a checked placement plan for an instance file."""
    import scheduler as sch

    if solver not in {s.value for s in sch.SolverName}:
        raise InvalidInput(
            f"--solver: {solver!r} is not one of auto, milp, heuristic, baseline", field="--solver"
        )
    if not time_limit > 0:
        raise InvalidInput("--time-limit must be positive", field="--time-limit")
    if churn_weight < 0:
        raise InvalidInput("--churn-weight must not be negative", field="--churn-weight")
    if out.exists() and not force:
        raise InvalidInput(f"{out}: already exists (pass --force to replace it)", field="--out")
    try:
        inst = sch.load_instance(instance)
        prev = sch.load_plan(previous) if previous is not None else None
        plan = sch.solve(
            inst, solver=solver, time_limit=time_limit, previous=prev, churn_weight=churn_weight
        )
    except sch.SchedulerError as e:
        raise InvalidInput(str(e)) from None
    _write_atomic(out, plan.to_json(), force)
    info = plan.solver
    gap = ""
    if info.bound is not None and info.bound > 0:
        gap = f", gap {max(0.0, (info.bound - plan.objective) / info.bound):.2%} (bound {info.bound:g})"
    msg = (
        f"{out}: {len(plan.assignments)} assignments, {len(plan.served)} demands served, "
        f"{len(plan.unserved)} unserved, objective {plan.objective:g}{gap}; "
        f"{info.name} in {info.seconds:.2f}s{' (optimal)' if info.optimal else ''}"
    )
    if prev is not None:
        moved, added = sch.churn(prev, plan)
        msg += f"; churn: {moved} previous assignments moved or removed, {added} new"
    typer.echo(msg, err=True)


@app.command()
def check(
    instance: Path = typer.Option(
        ..., "--instance", help="citybrain.schedule-instance/1 JSON file"
    ),
    plan: Path = typer.Option(..., "--plan", help="citybrain.schedule-plan/1 JSON file"),
) -> None:
    """Verify every constraint of a plan; exit 1 and list the violations if any."""
    import scheduler as sch

    try:
        inst = sch.load_instance(instance)
        p = sch.load_plan(plan)
    except sch.SchedulerError as e:
        raise InvalidInput(str(e)) from None
    violations = sch.check_plan(inst, p)
    if violations:
        for v in violations:
            typer.echo(str(v))
        typer.echo(f"{plan}: {len(violations)} violation(s)", err=True)
        raise typer.Exit(1)
    typer.echo(
        f"{plan}: ok ({len(p.assignments)} assignments, {len(p.served)} served, "
        f"{len(p.unserved)} unserved, objective {p.objective:g})"
    )


@app.command()
def generate(
    cameras: int = typer.Option(..., "--cameras", min=1),
    algorithms: int = typer.Option(..., "--algorithms", min=1),
    devices: int = typer.Option(..., "--devices", min=1),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(..., "--out", help="where to write the instance"),
    force: bool = typer.Option(False, "--force", help="replace --out if it exists"),
) -> None:
    """Write a seeded, realistic-ish instance (small or city scale)."""
    import scheduler as sch

    inst = sch.generate_instance(cameras, algorithms, devices, seed=seed)
    _write_atomic(out, inst.model_dump_json(by_alias=True, indent=1), force)
    typer.echo(
        f"{out}: {len(inst.cameras)} cameras, {len(inst.algorithms)} algorithms, "
        f"{len(inst.devices)} devices, {len(inst.policies)} policies",
        err=True,
    )

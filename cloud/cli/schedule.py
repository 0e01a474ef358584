"""``citybrain schedule``: solve, check and generate offline placement instances,
export the live graph as one, and run the re-planning service.

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
    extensions: Path | None = typer.Option(
        None, "--extensions", help="pins/exclusions JSON (citybrain.pins/1, citybrain.exclusions/1)"
    ),
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
        ext = sch.load_extensions(extensions) if extensions is not None else None
        plan = sch.solve(
            inst,
            solver=solver,
            time_limit=time_limit,
            previous=prev,
            churn_weight=churn_weight,
            extensions=ext,
        )
    except sch.SchedulerError as e:
        hint = ""
        if "extensions" in str(e) and "Extra inputs" in str(e):
            hint = " (pins/exclusions are not part of the instance: pass them with --extensions)"
        raise InvalidInput(f"{e}{hint}") from None
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
    extensions: Path | None = typer.Option(
        None, "--extensions", help="pins/exclusions the plan must honour"
    ),
) -> None:
    """Verify every constraint of a plan; exit 1 and list the violations if any."""
    import scheduler as sch

    try:
        inst = sch.load_instance(instance)
        p = sch.load_plan(plan)
        ext = sch.load_extensions(extensions) if extensions is not None else None
    except sch.SchedulerError as e:
        raise InvalidInput(str(e)) from None
    violations = sch.check_plan(inst, p, ext)
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


@app.command("export-instance")
def export_instance(
    out: Path = typer.Option(..., "--out", help="where to write the citybrain.schedule-instance/1"),
    extensions: Path | None = typer.Option(
        None, "--extensions", help="also write the active pins/exclusions to this file"
    ),
    at: str | None = typer.Option(
        None, "--at", help="policies active at this instant (ISO 8601; default now)"
    ),
    force: bool = typer.Option(False, "--force", help="replace existing files"),
) -> None:
    """Write the persisted graph + devices + active policies (catalog DB) exactly as
    citybrain.schedule-instance/1; pins and exclusions go to --extensions."""
    import json

    import knowledge_graph as kg
    import scheduler as sch
    from cloud.cli.graph import engine, kg_errors, parse_at

    when = parse_at(at)
    for path, flag in ((out, "--out"), (extensions, "--extensions")):
        if path is not None and path.exists() and not force:
            raise InvalidInput(f"{path}: already exists (pass --force to replace it)", field=flag)
    eng = engine()
    try:
        with kg_errors():
            graph = kg.load(eng)
            doc = kg.export_instance(graph, at=when)
            ext = kg.export_extensions(graph, at=when)
    finally:
        eng.dispose()
    try:
        inst = sch.parse_instance(doc, "live graph")  # exactly the format, or say why not
    except sch.SchedulerError as e:
        raise InvalidInput(str(e)) from None
    _write_atomic(out, inst.model_dump_json(by_alias=True, indent=1), force)
    if extensions is not None:
        _write_atomic(extensions, json.dumps(ext, indent=1), force)
    n_ext = sum(len(v) for v in ext.values())
    typer.echo(
        f"{out}: {len(inst.cameras)} cameras, {len(inst.algorithms)} algorithms, "
        f"{len(inst.devices)} devices, {len(inst.policies)} policies"
        + (f"; {extensions}: {n_ext} pins/exclusions" if extensions is not None else "")
        + (
            f" ({n_ext} active pins/exclusions not written: pass --extensions)"
            if n_ext and extensions is None
            else ""
        ),
        err=True,
    )


@app.command()
def run(
    channel: str = typer.Option("stable", "--channel", help="store channel devices follow"),
    churn_weight: float = typer.Option(1.0, "--churn-weight", min=0.0),
    time_limit: float = typer.Option(5.0, "--time-limit", help="solver time limit (s)"),
    solver: str = typer.Option("auto", "--solver", help="auto | milp | heuristic | baseline"),
    debounce: float = typer.Option(2.0, "--debounce", min=0.0, help="coalescing window (s)"),
    max_delay: float = typer.Option(10.0, "--max-delay", min=0.0, help="longest wait (s)"),
    offline_grace: float = typer.Option(
        30.0, "--offline-grace", min=0.0, help="offline this long before a device is dropped"
    ),
    device_interval: float = typer.Option(
        10.0, "--device-interval", min=0.0, help="a device's availability changes at most once per"
    ),
    poll: float = typer.Option(5.0, "--poll", min=0.1, help="graph/policies revision poll (s)"),
    state: Path | None = typer.Option(
        None, "--state", help="plan + revisions file (default <data_dir>/replan-state.json)"
    ),
    mqtt_url: str | None = typer.Option(None, "--mqtt-url", help="default CITYBRAIN_MQTT_URL"),
) -> None:
    """Re-planning service: device status, new versions, rollouts, policy changes and
    time-window edges -> re-solve with a churn penalty -> retained dev/{d}/desired."""
    import signal
    import threading

    import scheduler as sch
    from cloud.cli.graph import engine
    from cloud.cli.store import _errors as store_errors
    from cloud.cli.store import _store
    from cloud.core._logging import configure_logging
    from cloud.core.config import get_settings

    if solver not in {s.value for s in sch.SolverName}:
        raise InvalidInput(
            f"--solver: {solver!r} is not one of auto, milp, heuristic, baseline", field="--solver"
        )
    if not time_limit > 0:
        raise InvalidInput("--time-limit must be positive", field="--time-limit")
    if max_delay < debounce:
        raise InvalidInput("--max-delay must be at least --debounce", field="--max-delay")
    settings = get_settings()
    url = mqtt_url or settings.mqtt_url
    configure_logging(level="INFO")
    eng = engine()
    with store_errors():
        store = _store(announce_url=url)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        svc = sch.ReplanService(
            engine=eng,
            store=store,
            mqtt_url=url,
            state_path=state or settings.data_dir / "replan-state.json",
            channel=channel,
            churn_weight=churn_weight,
            time_limit=time_limit,
            solver=solver,
            window_s=debounce,
            max_delay_s=max_delay,
            offline_grace_s=offline_grace,
            device_min_interval_s=device_interval,
            poll_s=poll,
        )
        svc.start()
    except (sch.SchedulerError, ValueError) as e:
        eng.dispose()
        raise InvalidInput(str(e)) from None
    typer.echo(f"re-planning service running (broker {url}, channel {channel})", err=True)
    try:
        done.wait()
    finally:
        svc.stop()
        eng.dispose()
    typer.echo(f"stopped after {svc.replans} re-plans", err=True)

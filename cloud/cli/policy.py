"""``citybrain policy``: which events must be watched in which zones, when, with pins
(always run an algorithm on a camera) and exclusions (never on a camera / device)."""

from __future__ import annotations

import json

import typer

from cloud.cli.graph import kg_errors, live_graph, parse_at, split_values
from cloud.errors import InvalidInput

app = typer.Typer(help="Operator policies: events per zone, priority, time windows.")


def _pins(values: list[str]) -> list[dict[str, str]]:
    out = []
    for v in values:
        camera, sep, algorithm = v.partition(":")
        if not sep or not camera or not algorithm:
            raise InvalidInput(f"invalid --pin {v!r}: use CAMERA:ALGORITHM", field="pin")
        out.append({"camera": camera, "algorithm": algorithm})
    return out


def _exclusions(values: list[str]) -> list[dict[str, str]]:
    out = []
    for v in values:
        algorithm, sep, rest = v.partition(":")
        kind, eq, ident = rest.partition("=")
        if not sep or not algorithm or not eq or not ident or kind not in ("camera", "device"):
            raise InvalidInput(
                f"invalid --exclude {v!r}: use ALGORITHM:camera=CAMERA or ALGORITHM:device=DEVICE",
                field="exclude",
            )
        out.append({"algorithm": algorithm, kind: ident})
    return out


@app.command()
def add(
    zone: str = typer.Option(..., "--zone", help="glob over zone paths, e.g. longhua/*"),
    event: list[str] = typer.Option(None, "--event", help="events to watch (repeat or a,b)"),
    priority: float = typer.Option(..., "--priority", help="points per (camera, event), > 0"),
    hours: str | None = typer.Option(None, "--hours", help="hours of day, e.g. 7-19 or 22-6"),
    days: str | None = typer.Option(None, "--days", help="weekdays, e.g. mon-fri or sat,sun"),
    pin: list[str] = typer.Option(None, "--pin", help="CAMERA:ALGORITHM always runs"),
    exclude: list[str] = typer.Option(
        None, "--exclude", help="ALGORITHM:camera=CAMERA or ALGORITHM:device=DEVICE never runs"
    ),
    policy_id: str | None = typer.Option(None, "--id", help="policy id (default: generated)"),
    description: str = typer.Option("", "--description"),
) -> None:
    """Add a policy (validated against the graph: zones, events, cameras, devices)."""
    import knowledge_graph as kg

    with kg_errors():
        fields: dict = {
            "zone": zone,
            "events": split_values(event),
            "priority": priority,
            "hours": kg.parse_hours(hours) if hours else [],
            "days": kg.parse_days(days) if days else [],
            "pins": _pins(split_values(pin)),
            "exclusions": _exclusions(split_values(exclude)),
            "description": description,
        }
    if policy_id is not None:
        fields["id"] = policy_id
    policy = kg.Policy.model_validate(fields)
    with live_graph() as g:
        g.add_policy(policy)
    typer.echo(f"policy {policy.id} added")


@app.command("list")
def list_(
    at: str | None = typer.Option(None, "--at", help="mark policies active at (ISO 8601)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List policies (and whether each is active now, or at --at)."""
    from datetime import datetime

    when = parse_at(at) or datetime.now()
    with live_graph(write=False) as g:
        pols = list(g.policies.values())
    if as_json:
        rows = [{**p.model_dump(mode="json"), "active": p.active_at(when)} for p in pols]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not pols:
        typer.echo("no policies")
    for p in pols:
        window = ",".join(str(w) for w in p.hours) or "all day"
        days = ",".join(d.value for d in p.days) or "every day"
        extra = ""
        if p.pins:
            extra += " pins=" + ",".join(f"{x.camera}:{x.algorithm}" for x in p.pins)
        if p.exclusions:
            extra += " excludes=" + ",".join(
                f"{x.algorithm}:" + (f"camera={x.camera}" if x.camera else f"device={x.device}")
                for x in p.exclusions
            )
        state = "active" if p.active_at(when) else "inactive"
        typer.echo(
            f"{p.id}  zone={p.zone}  events={','.join(p.events) or '-'}  priority={p.priority:g}"
            f"  hours={window}  days={days}  [{state}]{extra}"
        )


@app.command()
def remove(policy_id: str) -> None:
    """Remove a policy."""
    with live_graph() as g:
        g.remove_policy(policy_id)
    typer.echo(f"policy {policy_id} removed")

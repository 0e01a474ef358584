"""``citybrain graph``: the city knowledge graph (ontology, cameras, devices,
algorithms), applicability with explanations, and export as a scheduling instance."""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from cloud.errors import InvalidInput
from cloud.errors import graph_errors as kg_errors

app = typer.Typer(
    help="The city knowledge graph: scenes, events, cameras, devices, algorithms.",
    no_args_is_help=True,
)


# ---------------------------------------------------------------------------
# shared with cloud.cli.policy
# ---------------------------------------------------------------------------


def engine():  # type: ignore[no-untyped-def]
    from cloud.catalog.db import make_engine, migrate
    from cloud.core.config import get_settings

    eng = make_engine(get_settings().database_url)
    migrate(eng)
    return eng


@contextmanager
def live_graph(*, write: bool = True) -> Iterator[Any]:
    """Load the stored graph; on success save it back (atomic, refusing to overwrite a
    graph someone else saved meanwhile)."""
    import knowledge_graph as kg

    eng = engine()
    try:
        with kg_errors():
            graph = kg.load(eng)
            yield graph
            if write:
                kg.save(graph, eng)
    finally:
        eng.dispose()


def split_values(values: list[str] | None) -> list[str]:
    """Repeated options, each possibly comma-separated: ``--scene a,b --scene c``."""
    out: list[str] = []
    for v in values or []:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


def parse_at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"invalid --at {text!r}: use ISO 8601, e.g. 2026-11-28T08:30", field="at"
        ) from None


def read_json(path: Path, what: str) -> Any:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidInput(f"cannot read {what} {path}: {e.strerror}", field=str(path)) from None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"{path}: not valid JSON: {e}", field=str(path)) from None


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


@app.command()
def seed() -> None:
    """Add the seed ontology (common city scenes, events, objects, targets); idempotent."""
    with live_graph() as g:
        added = g.seed()
    typer.echo(f"seed ontology merged: {added['nodes']} nodes, {added['edges']} edges added")


@app.command()
def extend(
    file: Path = typer.Option(..., "--file", help="citybrain.ontology/1 JSON document"),
) -> None:
    """Merge an ontology document (objects, events, scenes, targets) into the graph."""
    import knowledge_graph as kg

    raw = read_json(file, "ontology")
    with live_graph() as g:
        doc = kg.parse_ontology(raw, source=str(file))
        added = g.merge_ontology(doc)
    typer.echo(f"{file}: {added['nodes']} nodes, {added['edges']} edges added")


@app.command("add-scene")
def add_scene(
    name: str,
    event: list[str] = typer.Option(None, "--event", help="events that may happen there"),
    description: str = typer.Option("", "--description"),
) -> None:
    """Add a scene type."""
    with live_graph() as g:
        g.add_scene(name, may_have=split_values(event), description=description)
    typer.echo(f"scene {name} added")


@app.command("add-event")
def add_event(
    name: str,
    obj: list[str] = typer.Option(None, "--object", help="objects the event involves"),
    scene: list[str] = typer.Option(None, "--scene", help="scenes where it may happen"),
    description: str = typer.Option("", "--description"),
) -> None:
    """Add an event type."""
    with live_graph() as g:
        g.add_event(
            name,
            involves=split_values(obj),
            scenes=split_values(scene),
            description=description,
        )
    typer.echo(f"event {name} added")


@app.command("add-object")
def add_object(name: str, description: str = typer.Option("", "--description")) -> None:
    """Add an object type."""
    with live_graph() as g:
        g.add_object(name, description)
    typer.echo(f"object {name} added")


@app.command("add-camera")
def add_camera(
    camera: str,
    zone: str = typer.Option(..., "--zone", help="zone path, e.g. shenzhen/longhua/street-12"),
    scene: list[str] = typer.Option(None, "--scene", help="scene types the camera sees"),
    source: str | None = typer.Option(
        None, "--source", help="video file, image folder or stream URL (keyframes, edge streams)"
    ),
) -> None:
    """Add a camera in a zone (created with its parents) seeing operator-set scenes."""
    attrs = {"source": source} if source else {}
    with live_graph() as g:
        g.add_camera(camera, zone=zone, scenes=split_values(scene), **attrs)
    typer.echo(f"camera {camera} added in {zone}")


@app.command("set-scenes")
def set_scenes(
    camera: str,
    scene: list[str] = typer.Option(..., "--scene", help="the camera's scenes"),
) -> None:
    """Operator override: the camera sees exactly these scenes (inferred others rejected)."""
    with live_graph() as g:
        g.set_camera_scenes(camera, split_values(scene))
        now = g.camera_scenes(camera)
    typer.echo(f"camera {camera} sees {', '.join(now) or 'nothing'}")


@app.command("record-scenes")
def record_scenes(
    camera: str,
    score: list[str] = typer.Option(
        ..., "--score", help="SCENE=CONFIDENCE from a scene classifier, e.g. street=0.82"
    ),
) -> None:
    """Record a scene classifier's output for a camera (inferred scenes; operator,
    confirmed and rejected scenes are left as they are)."""
    scores: dict[str, float] = {}
    for item in split_values(score):
        name, eq, val = item.partition("=")
        try:
            if not eq:
                raise ValueError
            scores[name] = float(val)
        except ValueError:
            raise InvalidInput(
                f"invalid --score {item!r}: use SCENE=CONFIDENCE, e.g. street=0.82", field="score"
            ) from None
    with live_graph() as g:
        recorded = g.record_inferred_scenes(camera, scores)
        now = g.camera_scenes(camera)
    typer.echo(
        f"camera {camera}: recorded {', '.join(recorded) or 'nothing'}; "
        f"counting scenes: {', '.join(now) or 'none'}"
    )


@app.command("infer-scenes")
def infer_scenes(
    cameras: list[str] = typer.Argument(None, help="cameras (default: every camera, with --all)"),
    all_cameras: bool = typer.Option(False, "--all", help="every camera of the graph"),
    classifier: str = typer.Option(
        ..., "--classifier", help="store algorithm whose labels are scene names"
    ),
    version: str | None = typer.Option(None, "--version", help="default: what --channel holds"),
    channel: str = typer.Option("stable", "--channel"),
    frames: int = typer.Option(8, "--frames", min=1, max=64, help="keyframes per camera"),
    serve: bool = typer.Option(
        False, "--serve", help="run the classifier on Ray Serve (RAY_ADDRESS, else a local Ray)"
    ),
) -> None:
    """Infer cameras' scenes from keyframes of their sources with a scene classifier
    from the store (inferred scenes with confidence; operator, confirmed and rejected
    scenes are left as they are). A camera whose source cannot be read is reported and
    skipped; the others are still recorded."""
    import knowledge_graph as kg
    from cloud.cli.store import _errors as store_errors
    from cloud.cli.store import _store
    from cloud.errors import CitybrainError
    from cloud.scenes import infer_camera_scenes, load_classifier

    if bool(cameras) == all_cameras:
        raise InvalidInput("name cameras or pass --all (not both)", field="cameras")
    if serve:
        from cloud.serving import start_serving

        start_serving()
    with store_errors():
        predictor = load_classifier(_store(), classifier, version, channel, serve=serve)
    failed = 0
    with live_graph() as g:
        for cam in cameras or list(g.nodes(kg.NodeType.CAMERA)):
            try:
                out = infer_camera_scenes(g, cam, predictor, frames=frames)
            except CitybrainError as e:
                if not all_cameras:
                    raise
                failed += 1
                typer.echo(f"camera {cam}: skipped: {e.message}", err=True)
                continue
            top = ", ".join(
                f"{k}={v:.2f}" for k, v in sorted(out["scores"].items(), key=lambda kv: -kv[1])
            )
            typer.echo(
                f"camera {cam}: {top} ({out['frames']} keyframes, {out['classifier']}); "
                f"counting scenes: {', '.join(g.camera_scenes(cam)) or 'none'}"
            )
    if failed:
        typer.echo(f"{failed} camera(s) skipped", err=True)


@app.command("confirm-scene")
def confirm_scene(camera: str, scene: str) -> None:
    """Confirm an inferred scene of a camera."""
    with live_graph() as g:
        g.confirm_scene(camera, scene)
    typer.echo(f"camera {camera}: scene {scene} confirmed")


@app.command("reject-scene")
def reject_scene(camera: str, scene: str) -> None:
    """Reject a scene of a camera (kept as rejected; inference will not bring it back)."""
    with live_graph() as g:
        g.reject_scene(camera, scene)
    typer.echo(f"camera {camera}: scene {scene} rejected")


@app.command("add-device")
def add_device(
    device: str,
    target: str = typer.Option(..., "--target", help="hardware target, e.g. gpu-sm87"),
    ms_per_s: float = typer.Option(..., "--ms-per-s", help="compute ms available per second"),
    mem_mb: float = typer.Option(..., "--mem-mb", help="model memory in MB"),
    streams: int = typer.Option(..., "--streams", help="camera streams it can decode"),
    reaches: list[str] = typer.Option(None, "--reaches", help="cameras it can reach"),
) -> None:
    """Add an edge device with its capacity and the cameras it reaches."""
    with live_graph() as g:
        g.add_device(
            device,
            target=target,
            ms_per_s=ms_per_s,
            mem_mb=mem_mb,
            streams=streams,
            reaches=split_values(reaches),
        )
    typer.echo(f"device {device} ({target}) added")


def _read_manifest(path: Path):  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from edge_agent.protocol import MANIFEST_NAME, Manifest

    if path.is_dir():
        path = path / MANIFEST_NAME
    if path.is_file() and tarfile.is_tarfile(path):
        try:
            with tarfile.open(path, "r:") as tar:
                member = tar.extractfile(MANIFEST_NAME)
                data = member.read() if member is not None else None
        except (tarfile.TarError, KeyError, OSError) as e:
            raise InvalidInput(f"{path}: no readable {MANIFEST_NAME} in the package: {e}") from None
        if data is None:
            raise InvalidInput(f"{path}: {MANIFEST_NAME} in the package is not a file")
        try:
            raw = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidInput(f"{path}: {MANIFEST_NAME}: not valid JSON: {e}") from None
    else:
        raw = read_json(path, "manifest")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise InvalidInput(f"{path}: {loc}: {err['msg']}", field=loc) from None


@app.command("add-algorithm")
def add_algorithm(
    manifest: Path = typer.Option(
        ...,
        "--manifest",
        help="manifest.json of a store package, the package folder or its .tar archive",
    ),
    strict: bool = typer.Option(
        False, "--strict", help="refuse scenes/events that are not in the ontology"
    ),
) -> None:
    """Add (or upgrade) an algorithm from its store manifest."""
    m = _read_manifest(manifest)
    with live_graph() as g:
        created = g.add_algorithm_from_manifest(m, create_missing=not strict)
        current = g.node(_kg().NodeType.ALGORITHM, m.id)["version"]
    for c in created:
        typer.echo(f"warning: {c} was not in the ontology; created", err=True)
    if current != m.version:
        typer.echo(f"algorithm {m.id}: {m.version} recorded; {current} stays current")
    else:
        typer.echo(f"algorithm {m.id} {m.version} added")


def _kg():  # type: ignore[no-untyped-def]
    import knowledge_graph

    return knowledge_graph


@app.command()
def remove(
    kind: str = typer.Argument(..., help="camera|device|algorithm|scene|event|object|zone|target"),
    node_id: str = typer.Argument(...),
) -> None:
    """Remove a node and its edges (refused while a policy names it)."""
    kg = _kg()
    try:
        ntype = kg.NodeType(kind)
    except ValueError:
        kinds = "|".join(t.value for t in kg.NodeType)
        raise InvalidInput(f"unknown kind {kind!r}: use {kinds}", field="kind") from None
    with live_graph() as g:
        g.remove_node(ntype, node_id)
    typer.echo(f"{kind} {node_id} removed")


@app.command()
def applicable(
    camera: str,
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Algorithms applicable to a camera, each with the path justifying it."""
    with live_graph(write=False) as g:
        found = g.applicable(camera)
    if as_json:
        _echo_json([a.to_dict() for a in found])
        return
    if not found:
        typer.echo(f"no algorithm applies to {camera}")
    for a in found:
        typer.echo(f"{a.algorithm} {a.version}")
        for j in a.justifications:
            typer.echo(f"  {' -> '.join(j.path)}   ({j.sentence()})")


@app.command()
def explain(
    camera: str,
    algorithm: str,
    plan: Path | None = typer.Option(None, "--plan", help="a citybrain.schedule-plan/1 file"),
    at: str | None = typer.Option(None, "--at", help="evaluate policies at (ISO 8601)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Why an algorithm is or is not applicable to (or placed on) a camera."""
    when = parse_at(at)
    placement = read_json(plan, "plan") if plan is not None else None
    if placement is not None and not isinstance(placement, dict):
        raise InvalidInput(f"{plan}: a plan must be a JSON object", field=str(plan))
    with live_graph(write=False) as g:
        e = g.explain(camera, algorithm, placement=placement, at=when)
    if as_json:
        _echo_json(e.model_dump(mode="json"))
    else:
        typer.echo(f"{e.reason.value}: {e.sentence}")


@app.command()
def show(
    zone: str | None = typer.Option(None, "--zone", help="only cameras under this zone"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Summary of the graph, or the cameras of a zone with their scenes and algorithms."""
    with live_graph(write=False) as g:
        if zone is None:
            stats = g.stats()
            if as_json:
                _echo_json(stats)
            else:
                for k, v in stats.items():
                    typer.echo(f"{k:>10}: {v}")
            return
        with kg_errors():
            rows = g.zone_view(zone)
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        scenes = ", ".join(
            s["scene"]
            + ("" if s["source"] == "operator" else f" ({s['confidence']:.2f})")
            + (" [rejected]" if s["rejected"] else "")
            for s in r["scenes"]
        )
        typer.echo(
            f"{r['camera']}  zone={r['zone']}  scenes=[{scenes}]  devices="
            f"{','.join(r['devices']) or '-'}  algorithms={','.join(r['algorithms']) or '-'}"
        )


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(path)
    except OSError as e:
        raise InvalidInput(f"cannot write {path}: {e.strerror}", field=str(path)) from None


@app.command("export-instance")
def export_instance(
    out: Path = typer.Option(..., "--out", help="where to write the instance JSON"),
    at: str | None = typer.Option(None, "--at", help="policies active at (ISO 8601)"),
    extensions: Path | None = typer.Option(
        None, "--extensions", help="also write the active pins/exclusions to this file"
    ),
    embed: bool = typer.Option(
        False, "--embed-extensions", help="embed pins/exclusions under 'extensions'"
    ),
) -> None:
    """Write the live graph + devices + active policies as citybrain.schedule-instance/1
    (what `citybrain schedule solve --instance` reads)."""
    kg = _kg()
    when = parse_at(at)
    with live_graph(write=False) as g:
        doc = kg.export_instance(g, at=when, extensions=embed)
        ext = kg.export_extensions(g, at=when)
        n_algos = g.count(kg.NodeType.ALGORITHM)
        n_active = len([p for p in g.active_policies(when or datetime.now()) if p.events])
    _write_json(out, doc)
    if extensions is not None:
        _write_json(extensions, ext)
    n_ext = sum(len(v) for v in ext.values())
    typer.echo(
        f"wrote {out}: {len(doc['cameras'])} cameras, {len(doc['algorithms'])} algorithms, "
        f"{len(doc['devices'])} devices, {len(doc['policies'])} policies"
    )
    if n_algos > len(doc["algorithms"]):
        typer.echo(
            f"note: {n_algos - len(doc['algorithms'])} algorithms detect nothing and were left out",
            err=True,
        )
    if n_active > len(doc["policies"]):
        typer.echo(
            f"note: {n_active - len(doc['policies'])} active policies cover no camera and were "
            "left out",
            err=True,
        )
    if n_ext and extensions is None and not embed:
        typer.echo(
            f"warning: {n_ext} active pins/exclusions are not part of the instance format; "
            "use --extensions FILE or --embed-extensions to pass them",
            err=True,
        )


@app.command("import-instance")
def import_instance(
    file: Path = typer.Argument(..., help="a citybrain.schedule-instance/1 file"),
) -> None:
    """Merge a scheduling instance (algorithms, cameras, devices, policies) into the graph."""
    kg = _kg()
    doc = read_json(file, "instance")
    if not isinstance(doc, dict):
        raise InvalidInput(f"{file}: an instance must be a JSON object", field=str(file))
    with live_graph() as g:
        kg.import_instance(doc, graph=g, source=re.sub(r"[^A-Za-z0-9_.\-]", "_", file.stem))
        stats = g.stats()
    typer.echo(f"{file} merged: {stats['cameras']} cameras, {stats['algorithms']} algorithms now")

"""``citybrain model``: trained models in the catalog, and publishing them to the store."""

from __future__ import annotations

import json
from typing import Annotated

import typer

app = typer.Typer(
    help="Trained models: list, show lineage and metrics, publish to the store.",
    no_args_is_help=True,
)


@app.command("list")
def list_models(
    algorithm: Annotated[str | None, typer.Option(help="only this algorithm")] = None,
) -> None:
    """Models with version, status, accuracy and gate decision."""
    from sqlalchemy import select

    from cloud.catalog import Catalog
    from cloud.catalog.models import Model

    with Catalog.open() as cat, cat.transaction() as s:
        q = select(Model).order_by(Model.algorithm, Model.id)
        if algorithm:
            q = q.where(Model.algorithm == algorithm)
        for m in s.scalars(q):
            gate = m.metrics.get("gate", {})
            typer.echo(
                f"{m.algorithm:24} {m.version:10} {m.status.value:10} "
                f"acc {m.metrics.get('accuracy', float('nan')):.3f}  "
                f"gate {'pass' if gate.get('publish') else 'fail'}: {gate.get('reason', '')}"
            )


@app.command()
def show(algorithm: str, version: str) -> None:
    """A model's metrics, parameters, artifacts and lineage as JSON."""
    from sqlalchemy import select

    from cloud.catalog import Catalog
    from cloud.catalog.models import Model
    from cloud.errors import NotFound

    with Catalog.open() as cat:
        with cat.transaction() as s:
            m = s.scalar(
                select(Model).where(Model.algorithm == algorithm, Model.version == version)
            )
            if m is None:
                raise NotFound(f"no model {algorithm} {version}", field="version")
            doc = {
                "algorithm": m.algorithm,
                "version": m.version,
                "status": m.status.value,
                "backbone": m.backbone,
                "dataset_version_id": m.dataset_version_id,
                "task_id": m.task_id,
                "labels": m.labels,
                "params": m.params,
                "metrics": {k: v for k, v in m.metrics.items() if k != "detail"},
                "artifacts": m.artifacts,
            }
        if doc["task_id"]:
            doc["lineage"] = [
                {"direction": e.direction, "entity": e.entity, "id": e.entity_id, "role": e.role}
                for e in cat.lineage(task_id=doc["task_id"])
            ]
    typer.echo(json.dumps(doc, indent=2, default=str))


@app.command()
def publish(
    algorithm: str,
    version: str,
    channel: Annotated[
        str, typer.Option(help="store channel to point at the new version")
    ] = "canary",
    gate: Annotated[
        bool, typer.Option("--gate/--no-gate", help="refuse a candidate that is not better")
    ] = True,
    scene: Annotated[
        list[str] | None, typer.Option(help="scene types it applies to (repeat)")
    ] = None,
    detects: Annotated[
        list[str] | None, typer.Option(help="events/objects it detects (repeat)")
    ] = None,
    fps: Annotated[float, typer.Option(min=0.1)] = 2.0,
) -> None:
    """Package, sign and publish a trained model to the algorithm store."""
    from cloud.catalog import Catalog
    from cloud.cli.store import _store
    from cloud.flywheel._publish import publish_model

    store = _store(need_private=True)
    with Catalog.open() as cat:
        out = publish_model(
            cat,
            store,
            algorithm,
            version,
            channel=channel,
            enforce_gate=gate,
            scenes=scene or (),
            detects=detects or (),
            fps=fps,
        )
    typer.echo(
        f"published {out['algorithm']} {out['version']} to {out['channel']} "
        f"(package {out['package_sha256'][:12]}, {out['size']} bytes)"
    )

"""``citybrain dataset``: import, list, show, export, version."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Datasets: import images/videos/label files, export, version.", no_args_is_help=True
)


def _catalog():  # type: ignore[no-untyped-def]
    from cloud.catalog import Catalog

    return Catalog.open()


@app.command("import")
def import_cmd(
    path: Path = typer.Argument(
        ..., help="image, folder, video, COCO/Label Studio JSON, YOLO folder or zip"
    ),
    name: str = typer.Option(..., "--name", "-n", help="dataset name"),
    labels: Path | None = typer.Option(None, "--labels", help="CSV with a 'path,label' header"),
    every_k: int | None = typer.Option(None, "--every-k", help="video: keep every k-th frame"),
    every_s: float | None = typer.Option(
        None, "--every-s", help="video: keep a frame every t seconds (default 1)"
    ),
    dedup_threshold: int = typer.Option(
        4, "--dedup-threshold", help="video: max dHash distance of a near-duplicate; -1 keeps all"
    ),
    create: bool = typer.Option(True, "--create/--no-create", help="create the dataset if missing"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Import files into dataset NAME (all or nothing; re-importing adds nothing)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from cloud.errors import InvalidInput
    from cloud.importers import import_path
    from cloud.jobs import throttled_progress

    if every_k is not None and every_s is not None:
        raise InvalidInput("give --every-k or --every-s, not both", field="every_k")
    catalog = _catalog()
    options = {"every_k": every_k, "every_s": every_s, "dedup_threshold": dedup_threshold}
    task_id = _start_import_task(catalog, path, name, labels, options)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[msg]}"),
        transient=True,
        disable=as_json,
    ) as bar:
        task = bar.add_task(f"import {path.name}", total=1.0, msg="")
        record = throttled_progress(catalog.sessions, task_id)

        def progress(fraction: float, msg: str) -> None:
            bar.update(task, completed=fraction, msg=msg)
            record(fraction, msg)

        try:
            report = import_path(
                catalog,
                path,
                name,
                labels_csv=labels,
                every_k=every_k,
                every_s=every_s,
                dedup_threshold=dedup_threshold,
                create=create,
                task_id=task_id,
                progress=progress,
            )
        except BaseException as e:
            _finish_import_task(catalog, task_id, error=e)
            raise
    report.task_id = task_id
    _finish_import_task(catalog, task_id, report=report)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    verb = "created" if report.created else "updated"
    typer.echo(
        f"{verb} dataset {report.dataset}: {report.added} new samples, {report.existing} already "
        f"there, {report.annotations_added} labels added ({report.kind}, {report.seconds:.1f}s)"
    )
    if report.frames_sampled:
        typer.echo(
            f"video: {report.frames_sampled} frames sampled, "
            f"{report.duplicates_removed} near-duplicates removed"
        )
    if report.skipped:
        typer.echo(f"skipped {len(report.skipped)} files:")
        for s in report.skipped[:50]:
            typer.echo(f"  {s.file}: {s.reason}")
        if len(report.skipped) > 50:
            typer.echo(f"  … and {len(report.skipped) - 50} more (use --json for all)")


def _start_import_task(catalog, path: Path, name: str, labels: Path | None, options: dict):  # type: ignore[no-untyped-def]
    """Record the import as a running catalog task (kind ``import``, by "cli"),
    so it shows on the console's tasks page like an upload does."""
    from sqlalchemy import select

    from cloud.catalog.db import transaction
    from cloud.catalog.models import Dataset, Task, TaskKind, TaskStatus, utcnow

    params = {"dataset": name, "path": str(path.resolve()), "via": "cli"}
    if labels is not None:
        params["labels_csv"] = str(labels.resolve())
    params.update({k: v for k, v in options.items() if v is not None})
    with transaction(catalog.sessions) as s:
        now = utcnow()
        task = Task(
            kind=TaskKind.IMPORT,
            status=TaskStatus.RUNNING,
            title=f"import {path.name} into {name}",
            dataset_id=s.scalar(select(Dataset.id).where(Dataset.name == name)),
            params=params,
            created_by="cli",
            attempts=1,
            started_at=now,
            heartbeat_at=now,
        )
        s.add(task)
        s.flush()
        return task.id


def _finish_import_task(catalog, task_id: str, *, report=None, error=None) -> None:  # type: ignore[no-untyped-def]
    from cloud.catalog.models import TaskStatus
    from cloud.errors import CitybrainError
    from cloud.jobs import transition

    if error is not None:
        msg = error.message if isinstance(error, CitybrainError) else type(error).__name__
        if not isinstance(error, CitybrainError) and str(error):
            msg = f"{msg}: {error}"
        transition(
            catalog.sessions,
            task_id,
            TaskStatus.RUNNING,
            TaskStatus.FAILED,
            error=msg,
            message="failed",
        )
        return
    done = f"{report.added} added, {report.existing} already there, {len(report.skipped)} skipped"
    transition(
        catalog.sessions,
        task_id,
        TaskStatus.RUNNING,
        TaskStatus.SUCCEEDED,
        progress=1.0,
        message=done,
        result=report.model_dump(mode="json"),
        dataset_id=report.dataset_id,
    )


@app.command("list")
def list_cmd() -> None:
    """List datasets with sample and label counts."""
    from rich.console import Console
    from rich.table import Table

    catalog = _catalog()
    table = Table("name", "samples", "labeled", "labels", "versions", "created")
    for ds in catalog.list_datasets():
        st = catalog.dataset_stats(ds.id)
        table.add_row(
            st.name,
            str(st.samples),
            str(st.labeled),
            ", ".join(st.labels),
            str(st.versions),
            st.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    Console().print(table)


@app.command("show")
def show_cmd(name: str = typer.Argument(..., help="dataset name or id")) -> None:
    """Show a dataset: counts per label, pool and split, versions."""
    catalog = _catalog()
    st = catalog.dataset_stats(name)
    typer.echo(
        f"dataset {st.name} (id {st.id}) created {st.created_at:%Y-%m-%d %H:%M} by {st.created_by or '-'}"
    )
    if st.description:
        typer.echo(f"  {st.description}")
    typer.echo(f"samples: {st.samples}, labeled: {st.labeled}")
    typer.echo(f"labels: {', '.join(st.labels) or '-'}")
    for lab in st.labels:
        typer.echo(f"  {lab}: {st.per_label.get(lab, 0)}")
    typer.echo("pools: " + ", ".join(f"{k}={v}" for k, v in sorted(st.per_pool.items())))
    typer.echo("splits: " + ", ".join(f"{k}={v}" for k, v in sorted(st.per_split.items())))
    for v in catalog.list_versions(st.id):
        typer.echo(
            f"  v{v.number}: {v.sample_count} samples, {v.labeled_count} labeled, "
            f"{v.created_at:%Y-%m-%d %H:%M} {v.note}"
        )


@app.command("export")
def export_cmd(
    name: str = typer.Argument(..., help="dataset name or id"),
    fmt: str = typer.Option(..., "--format", "-f", help="coco | yolo | csv"),
    out: Path = typer.Option(
        ..., "--out", "-o", help="folder to create (must not exist or be empty)"
    ),
    version: int | None = typer.Option(
        None, "--version", "-v", help="dataset version (default: working set)"
    ),
) -> None:
    """Export a dataset (or one of its versions) as COCO, YOLO or CSV."""
    from rich.progress import Progress

    from cloud.importers import export_dataset

    catalog = _catalog()
    with Progress(transient=True) as bar:
        task = bar.add_task(f"export {name}", total=1.0)
        report = export_dataset(
            catalog,
            name,
            fmt,
            out,
            version,
            progress=lambda f, _m: bar.update(task, completed=f),
        )
    typer.echo(
        f"exported {report.images} images ({report.labeled} labeled, {report.annotations} "
        f"annotations) as {report.format} to {report.out}"
    )


@app.command("version")
def version_cmd(
    name: str = typer.Argument(..., help="dataset name or id"),
    note: str = typer.Option("", "--note", help="what changed"),
) -> None:
    """Freeze the dataset's members and current labels as a new version."""
    import getpass

    catalog = _catalog()
    v = catalog.create_version(name, note=note, created_by=getpass.getuser())
    typer.echo(f"created {name} v{v.number}: {v.sample_count} samples, {v.labeled_count} labeled")


@app.command("create")
def create_cmd(
    name: str = typer.Argument(..., help="dataset name"),
    labels: str = typer.Option("", "--labels", help="comma-separated class names"),
    description: str = typer.Option("", "--description"),
) -> None:
    """Create an empty dataset."""
    import getpass

    catalog = _catalog()
    ds = catalog.create_dataset(
        name,
        labels=[x for x in labels.split(",") if x.strip()],
        description=description,
        created_by=getpass.getuser(),
    )
    typer.echo(f"created dataset {ds.name} (id {ds.id})")

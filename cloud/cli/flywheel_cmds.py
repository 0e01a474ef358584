"""Top-level flywheel commands: ``citybrain pretrain``, ``train``, ``similar``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _progress_bar(description: str):  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[msg]}"),
        TimeElapsedColumn(),
        transient=False,
    )
    tid = bar.add_task(description, total=1.0, msg="")
    return bar, lambda f, m: bar.update(tid, completed=f, msg=m)


def register(app: typer.Typer) -> None:
    @app.command()
    def pretrain(
        dataset: Annotated[str, typer.Argument(help="dataset name")],
        backbone: Annotated[
            Path | None,
            typer.Option(
                help="pretrained backbone file (.onnx, TorchScript .pt, .ckpt) instead of "
                "self-supervised pretraining; never fetched from a hub"
            ),
        ] = None,
        epochs: Annotated[int, typer.Option(min=1, help="self-supervised epochs")] = 20,
        max_images: Annotated[
            int, typer.Option(min=2, help="pool images used for pretraining")
        ] = 5000,
        seed: int = 0,
    ) -> None:
        """Self-supervised pretraining on a dataset's unlabeled pool, then embeddings for every sample."""
        from cloud.catalog import Catalog
        from cloud.flywheel._pipeline import pretrain_dataset

        with Catalog.open() as cat:
            bar, cb = _progress_bar(f"pretrain {dataset}")
            with bar:
                out = pretrain_dataset(
                    cat,
                    dataset,
                    epochs=epochs,
                    backbone_file=backbone,
                    max_images=max_images,
                    seed=seed,
                    created_by="cli",
                    progress=cb,
                )
        typer.echo(
            f"backbone {out.backbone}: {out.epochs} epochs, {out.samples} samples embedded "
            f"(task {out.task_id})"
        )

    @app.command()
    def train(
        dataset: Annotated[str, typer.Argument(help="dataset name")],
        task: Annotated[str, typer.Option(help="classify | detect")] = "classify",
        algorithm: Annotated[
            str | None, typer.Option(help="algorithm id (default: dataset name)")
        ] = None,
        backbone: Annotated[
            Path | None, typer.Option(help="backbone file (default: the dataset's pretraining)")
        ] = None,
        mode: Annotated[
            str,
            typer.Option(
                help="classify: auto | head | finetune | scratch; "
                "detect: auto | frozen | finetune | scratch"
            ),
        ] = "auto",
        seed: int = 0,
        epochs: Annotated[
            int | None, typer.Option(min=1, help="detect: training epochs (default: automatic)")
        ] = None,
        input_size: Annotated[
            int | None, typer.Option(min=32, help="detect: square input side in px (default 128)")
        ] = None,
    ) -> None:
        """Train on the labeled samples (labels or boxes), evaluate on the frozen test split, export ONNX, register a candidate."""
        from cloud.catalog import Catalog
        from cloud.errors import InvalidInput
        from cloud.flywheel._pipeline import train_config, train_dataset

        if task not in ("classify", "detect"):
            raise InvalidInput(f"--task must be classify or detect, not {task!r}", field="task")
        knobs: dict[str, object] = {"mode": mode, "seed": seed}
        if task == "detect":
            knobs |= {k: v for k, v in (("epochs", epochs), ("input_size", input_size)) if v}
        elif epochs or input_size:
            raise InvalidInput("--epochs and --input-size apply to --task detect", field="task")
        cfg = train_config(task, knobs)
        with Catalog.open() as cat:
            bar, cb = _progress_bar(f"train {dataset}")
            with bar:
                out = train_dataset(
                    cat,
                    dataset,
                    task=task,
                    algorithm=algorithm,  # type: ignore[arg-type]
                    backbone_file=backbone,
                    config=cfg,
                    created_by="cli",
                    progress=cb,
                )
        m = out.metrics
        if out.task == "detect":
            aps = ", ".join(f"{k} {v.ap:.3f}" for k, v in m.per_class.items() if v.ap is not None)
            typer.echo(
                f"{out.algorithm} {out.version} ({out.mode} detector): mAP@0.5 {m.map50:.3f} "
                f"({aps}) on {m.n} test images, {m.boxes} boxes"
            )
        else:
            typer.echo(
                f"{out.algorithm} {out.version} ({out.mode}): accuracy {m.accuracy:.3f}, "
                f"balanced {m.balanced_accuracy:.3f}, ECE {m.ece:.3f} on {m.n} test samples"
            )
        typer.echo(
            f"gate: {'publishable' if out.gate.publish else 'NOT publishable'} - {out.gate.reason}"
        )

    @app.command()
    def similar(
        dataset: Annotated[str, typer.Argument(help="dataset name")],
        sample: Annotated[str, typer.Argument(help="sample id (sha256 or a unique prefix)")],
        k: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    ) -> None:
        """Nearest neighbours of a sample by embedding: find more like this."""
        from cloud.catalog import Catalog
        from cloud.flywheel._pipeline import dataset_backbone, embedding_store

        with Catalog.open() as cat:
            ids = [it.sample_id for it in cat.iter_items(dataset)]
            match = [s for s in ids if s.startswith(sample)]
            if len(match) != 1:
                from cloud.errors import InvalidInput

                raise InvalidInput(
                    f"{sample!r} matches {len(match)} samples of {dataset!r}", field="sample"
                )
            store = embedding_store(cat, dataset_backbone(cat, dataset))
            for sid, score in store.neighbours(match[0], k, among=ids):
                typer.echo(f"{sid}  {score:.3f}")

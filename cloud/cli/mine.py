"""``citybrain mine``: one mining round on a dataset (pool + field hard cases)
that opens an annotation task with pre-labels and the reason each sample was chosen."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def mine(
        dataset: Annotated[str, typer.Argument(help="dataset name")],
        budget: Annotated[int, typer.Option(help="how many samples to send to annotators")],
        model: Annotated[
            str | None,
            typer.Option(
                help="model version: algorithm@version or a version of the dataset's "
                "algorithm (default: the newest published, else the newest candidate)"
            ),
        ] = None,
        strategy: Annotated[
            str,
            typer.Option(
                help="auto | random | least_confidence | margin | entropy | kcenter | "
                "typiclust | probcover | badge"
            ),
        ] = "auto",
        pool: Annotated[
            list[str] | None,
            typer.Option(
                help="pool(s) of the dataset to mine (repeatable; default main, field_hard)"
            ),
        ] = None,
        no_field: Annotated[
            bool,
            typer.Option(
                "--no-field", help="leave out the field hard cases sent back by edge devices"
            ),
        ] = False,
        seed: int = 0,
    ) -> None:
        """Score the pool, select BUDGET samples and open an annotation task pre-labeled by the model."""
        from rich.console import Console
        from rich.table import Table

        from cloud.catalog import Catalog
        from cloud.cli.flywheel_cmds import _progress_bar
        from cloud.flywheel._mine import mine_dataset, prepare_mining

        with Catalog.open() as cat:
            # bad input: one line on stderr before any progress bar
            prepare_mining(
                cat,
                dataset,
                model_version=model,
                budget=budget,
                strategy=strategy,
                pools=pool or None,
                include_field=not no_field,
            )
            bar, cb = _progress_bar(f"mine {dataset}")
            with bar:
                out = mine_dataset(
                    cat,
                    dataset,
                    model_version=model,
                    budget=budget,
                    strategy=strategy,
                    pools=pool or None,
                    include_field=not no_field,
                    seed=seed,
                    created_by="cli",
                    progress=cb,
                )
        typer.echo(
            f"annotation task {out.annotation_task_id}: {out.selected} samples "
            f"({out.from_field} from field hard cases) chosen by {out.strategy} "
            f"from a pool of {out.pool_size}"
            + (f", pre-labeled by {out.model}" if out.model else ", no model: no pre-labels")
        )
        typer.echo(f"mining task {out.task_id}; {out.field_pool} field hard cases were in the pool")
        table = Table(title="top reasons")
        table.add_column("count", justify="right")
        table.add_column("reason")
        for kind, n in list(out.reason_kinds.items())[:5]:
            table.add_row(str(n), kind)
        Console().print(table)
        if out.selected < out.budget:
            typer.echo(
                f"note: {out.budget - out.selected} picks were queued by another task meanwhile"
            )

"""The ``citybrain`` command line.

Each command group lives in its own module of this package exposing ``app``
(a ``typer.Typer``); top-level commands live in modules exposing ``register(app)``.
Modules import heavy dependencies (torch, ray) inside their commands so that
``citybrain --help`` stays fast.

Errors of the :mod:`cloud.errors` tree (and pydantic validation errors) end
the process with exit code 2 and one line on stderr.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import typer

#: group name -> module exposing ``app``
GROUPS = {
    "dataset": "cloud.cli.dataset",
    "store": "cloud.cli.store",
    "schedule": "cloud.cli.schedule",
    "graph": "cloud.cli.graph",
    "policy": "cloud.cli.policy",
    "flywheel": "cloud.cli.flywheel",
    "fleet": "cloud.cli.fleet",
    "token": "cloud.cli.token",
    "task": "cloud.cli.task",
    "model": "cloud.cli.model",
    "cameras": "cloud.cli.cameras",
}
#: modules exposing ``register(app)`` for top-level commands
COMMAND_MODULES = [
    "cloud.cli.serve",
    "cloud.cli.worker",
    "cloud.cli.ingest",
    "cloud.cli.flywheel_cmds",
    "cloud.cli.mine",
    "cloud.cli.demo",
]


def _exists(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="citybrain",
        help="citybrain: data flywheel, algorithm store, scheduler and edge fleet for city video.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    @app.callback()
    def _global(
        log_format: str | None = typer.Option(
            None,
            "--log-format",
            help="logs of the service commands (serve, ingest, worker, schedule run): "
            "text or json (one object per line); default CITYBRAIN_LOG_FORMAT, else text",
        ),
    ) -> None:
        from cloud.core._logging import set_cli_format

        try:
            set_cli_format(log_format)
        except ValueError as e:
            raise fail(f"--log-format: {e}") from None

    @app.command()
    def version() -> None:
        """Print the citybrain version."""
        from importlib.metadata import version as _v

        typer.echo(_v("citybrain"))

    for name, module in GROUPS.items():
        if _exists(module):
            app.add_typer(importlib.import_module(module).app, name=name)
    for module in COMMAND_MODULES:
        if _exists(module):
            importlib.import_module(module).register(app)
    return app


def fail(message: str) -> typer.Exit:
    """Print one line on stderr and return the exit to raise (code 2)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def main() -> None:
    from pydantic import ValidationError

    from cloud.errors import CitybrainError

    app = build_app()
    try:
        app(standalone_mode=True)
    except CitybrainError as e:
        where = f" ({e.field})" if e.field else ""
        typer.echo(f"error: {e.message}{where}", err=True)
        sys.exit(2)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        typer.echo(f"error: {loc}: {err['msg']}", err=True)
        sys.exit(2)

"""``citybrain demo``: run the whole loop on this machine (see :mod:`cloud.demo`)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        headless: bool = typer.Option(
            False, "--headless", help="run to the end and exit (0 only if every stage succeeded)"
        ),
        size: str = typer.Option("default", "--size", help="small | default"),
        data_dir: Path | None = typer.Option(
            None, "--data-dir", help="where everything is kept (default CITYBRAIN_DATA_DIR)"
        ),
        port: int | None = typer.Option(
            None, "--port", min=1, max=65535, help="API + console port (default CITYBRAIN_API_PORT)"
        ),
        hard_timeout: float = typer.Option(
            300.0, "--hard-timeout", min=1.0, help="seconds to wait for field hard samples"
        ),
    ) -> None:
        """Start what is missing and run the flywheel end to end, narrated."""
        from cloud.core.config import get_settings
        from cloud.demo import SIZES, DemoError, PreflightError, run_demo
        from cloud.errors import InvalidInput

        if size not in SIZES:
            raise InvalidInput(
                f"--size must be one of {', '.join(SIZES)}, got {size!r}", field="--size"
            )
        try:
            code = run_demo(
                data_dir or get_settings().data_dir,
                size=size,  # type: ignore[arg-type]
                port=port,
                headless=headless,
                hard_timeout_s=hard_timeout,
            )
        except PreflightError:
            raise
        except DemoError as e:
            typer.echo(f"error: demo failed: {e.message}", err=True)
            raise typer.Exit(1) from None
        raise typer.Exit(code)

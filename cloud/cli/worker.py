"""``citybrain worker``: run jobs from the queue (see :mod:`cloud.jobs`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(
        handlers: str | None = typer.Option(
            None,
            "--handlers",
            envvar="CITYBRAIN_JOB_HANDLERS",
            help="extra handlers as module:attr (a mapping task kind -> fn(ctx), "
            "or a callable returning one)",
        ),
        max_jobs: int | None = typer.Option(
            None, "--max-jobs", min=1, help="exit after handling this many queue entries"
        ),
        idle_exit: float | None = typer.Option(
            None, "--idle-exit", min=0, help="exit after this many seconds without work"
        ),
        name: str | None = typer.Option(None, "--name", help="consumer name (default host-pid)"),
        log_level: str = typer.Option("info", "--log-level", help="debug | info | warning"),
    ) -> None:
        """Run queued tasks (import, training, ...) until SIGTERM / Ctrl-C."""
        import redis

        from cloud.core._logging import configure_logging
        from cloud.core.config import get_settings
        from cloud.errors import Unavailable
        from cloud.jobs import Worker, load_handlers, registered_handlers

        configure_logging(level=log_level)
        settings = get_settings()
        table = load_handlers(handlers) if handlers else registered_handlers()
        w = Worker(settings, table, name=name)
        try:
            w.redis.ping()
        except redis.RedisError as e:
            raise Unavailable(f"cannot reach Redis at {settings.redis_url}: {e}") from e
        kinds = ", ".join(sorted(k.value for k in table))
        typer.echo(f"worker {w.name}: handling {kinds}", err=True)
        n = w.run(max_jobs=max_jobs, idle_exit_s=idle_exit)
        typer.echo(f"worker {w.name}: stopped after {n} entries", err=True)

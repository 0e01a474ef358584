"""``citybrain serve``: the REST API and web console (uvicorn)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        host: str | None = typer.Option(None, help="bind address (default CITYBRAIN_API_HOST)"),
        port: int | None = typer.Option(
            None, min=1, max=65535, help="port (default CITYBRAIN_API_PORT)"
        ),
        log_level: str = typer.Option("info", help="uvicorn log level"),
    ) -> None:
        """Serve the REST API (/api/v1) and the web console."""
        import uvicorn

        from cloud.api.main import create_app
        from cloud.core._logging import configure_logging
        from cloud.core.config import get_settings

        settings = get_settings()
        fmt = configure_logging(level=log_level)
        app = create_app(settings)
        uvicorn.run(
            app,
            host=host or settings.api_host,
            port=port or settings.api_port,
            log_level=log_level,
            proxy_headers=False,
            # json: uvicorn's loggers propagate to the root handler instead of their own
            **({"log_config": None} if fmt == "json" else {}),
        )

"""The FastAPI application: REST API under ``/api/v1`` and the web console.

``create_app(settings)`` opens the catalog, makes the bootstrap admin token if
configured, installs the one error mapping (:mod:`cloud.api.errors`) and mounts
one router per resource plus the console pages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from cloud.api.errors import install_error_handlers
from cloud.core.config import Settings, get_settings

API_PREFIX = "/api/v1"
log = logging.getLogger("citybrain.api")


def _open_catalog(settings: Settings):  # type: ignore[no-untyped-def]
    from cloud.catalog import Catalog

    return Catalog.open(settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The citybrain API + console for ``settings`` (default: from the environment)."""
    from cloud.api.routes import ROUTERS
    from cloud.console import mount_console

    settings = settings or get_settings()
    catalog = _open_catalog(settings)
    if settings.bootstrap_token:
        from cloud.api.tokens import ensure_bootstrap_token
        from cloud.catalog.db import transaction

        with transaction(catalog.sessions) as session:
            ensure_bootstrap_token(session, settings.bootstrap_token)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        close = getattr(app.state.catalog, "close", None)
        if callable(close):
            close()

    app = FastAPI(
        title="citybrain",
        version="1",
        summary="Catalog, annotation, tasks and models of the citybrain control plane.",
        description="All endpoints except `/api/v1/health` need `Authorization: Bearer <token>`. "
        'Errors are JSON: `{"error": {"type", "message", "field"}}`.',
        lifespan=lifespan,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )

    @app.middleware("http")
    async def server_timing(request: Request, call_next):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        response = await call_next(request)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - t0) * 1000:.2f}"
        return response

    app.state.settings = settings
    app.state.catalog = catalog
    install_error_handlers(app)
    from cloud.api.routes.metrics import install_metrics

    install_metrics(app, catalog=catalog)  # Prometheus GET /metrics
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    from cloud.api.routes import flywheel, mining
    from cloud.api.routes.store import store_router

    app.include_router(flywheel.router, prefix=API_PREFIX)
    app.include_router(mining.router, prefix=API_PREFIX)
    app.include_router(store_router(settings), prefix=API_PREFIX)
    mount_console(app)
    return app


__all__ = ["API_PREFIX", "create_app"]

"""One router per resource, all mounted under ``/api/v1``."""

from __future__ import annotations

from cloud.api.routes import (
    annotation_tasks,
    annotations,
    datasets,
    devices,
    events,
    graph,
    health,
    models,
    policies,
    samples,
    tasks,
    tokens,
    uploads,
)

ROUTERS = [
    health.router,
    tokens.router,
    datasets.router,
    uploads.router,
    samples.router,
    annotations.router,
    annotation_tasks.router,
    tasks.router,
    models.router,
    events.router,
    devices.router,
    graph.router,
    policies.router,
]

__all__ = ["ROUTERS"]

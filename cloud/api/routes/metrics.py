"""Prometheus ``GET /metrics`` of the API (at the root, not under ``/api/v1``,
where scrapers look; no token, it exposes counts only).

Families::

    citybrain_api_requests_total{method,route,status}      counter
    citybrain_api_request_duration_seconds{method,route}   histogram
    citybrain_api_requests_in_progress                      gauge
    citybrain_tasks{status}                                 gauge (catalog, every status)
    citybrain_models{status}                                gauge (catalog, every status)
    citybrain_catalog_up                                    gauge (1 if the last read worked)

``route`` is the route *template* (``/api/v1/datasets/{dataset_id}``), or
``<unmatched>`` for paths no route knows, so label cardinality stays bounded.
Catalog gauges come from one ``GROUP BY`` per table, cached for
``catalog_ttl_s`` so frequent scrapes stay cheap.

:func:`format_family` writes the text exposition format with the standard
library only: the edge agent (which must not import cloud) can mirror it for
its own ``/metrics`` (frames/s, inference ms, dropped frames, outbox depth,
model versions) without prometheus_client.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("citybrain.api.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
UNMATCHED = "<unmatched>"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """(exposition bytes, content type) of ``registry``."""
    return _generate_latest(registry), CONTENT_TYPE


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else f"{float(v):.1f}"


def format_family(
    name: str,
    kind: str,
    help_text: str,
    samples: Iterable[tuple[Mapping[str, str], float]],
) -> str:
    """One metric family in the Prometheus text format (stdlib only).

    ``kind`` is ``counter`` | ``gauge`` | ``untyped``; a counter's samples are
    written as ``<name>_total``. Label values are escaped."""
    if kind not in ("counter", "gauge", "untyped"):
        raise ValueError(f"kind must be counter, gauge or untyped, got {kind!r}")
    if (
        not name
        or not (name[0].isalpha() or name[0] in "_:")
        or not all(c.isalnum() or c in "_:" for c in name)
    ):
        raise ValueError(f"invalid metric name {name!r}")
    sample_name = f"{name}_total" if kind == "counter" and not name.endswith("_total") else name
    help_escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    lines = [f"# HELP {sample_name} {help_escaped}", f"# TYPE {sample_name} {kind}"]
    for labels, value in samples:
        if labels:
            inner = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in sorted(labels.items()))
            lines.append(f"{sample_name}{{{inner}}} {_fmt_value(value)}")
        else:
            lines.append(f"{sample_name} {_fmt_value(value)}")
    return "\n".join(lines) + "\n"


class CatalogCollector(Collector):
    """Tasks and models per status, read from the catalog at scrape time."""

    def __init__(self, catalog: Any, *, ttl_s: float = 2.0) -> None:
        self.catalog = catalog
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, int], dict[str, int], bool] | None = None

    def _read(self) -> tuple[dict[str, int], dict[str, int], bool]:
        from sqlalchemy import func, select

        from cloud.catalog.models import Model, ModelStatus, Task, TaskStatus

        tasks = {s.value: 0 for s in TaskStatus}
        models = {s.value: 0 for s in ModelStatus}
        try:
            with self.catalog.sessions() as s:
                for status, n in s.execute(select(Task.status, func.count()).group_by(Task.status)):
                    tasks[getattr(status, "value", str(status))] = int(n)
                for status, n in s.execute(
                    select(Model.status, func.count()).group_by(Model.status)
                ):
                    models[getattr(status, "value", str(status))] = int(n)
        except Exception as e:  # a scrape must not fail because the catalog is down
            log.warning("metrics: catalog unreadable: %s", e)
            return tasks, models, False
        return tasks, models, True

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.ttl_s:
                self._cached = (now, *self._read())
            _, tasks, models, ok = self._cached
        g = GaugeMetricFamily(
            "citybrain_tasks", "tasks in the catalog by status", labels=["status"]
        )
        for status, n in sorted(tasks.items()):
            g.add_metric([status], n)
        yield g
        m = GaugeMetricFamily(
            "citybrain_models", "models in the catalog by status", labels=["status"]
        )
        for status, n in sorted(models.items()):
            m.add_metric([status], n)
        yield m
        yield GaugeMetricFamily(
            "citybrain_catalog_up", "1 if the last catalog read for metrics worked", value=int(ok)
        )


class ApiMetrics:
    """The API's metric families in their own registry (one per app, so test
    apps never collide in the global registry)."""

    def __init__(self, catalog: Any | None = None, *, catalog_ttl_s: float = 2.0) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "citybrain_api_requests",
            "HTTP requests answered, by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "citybrain_api_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "citybrain_api_requests_in_progress",
            "HTTP requests being handled",
            registry=self.registry,
        )
        self.catalog_collector: CatalogCollector | None = None
        if catalog is not None:
            self.catalog_collector = CatalogCollector(catalog, ttl_s=catalog_ttl_s)
            self.registry.register(self.catalog_collector)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


def route_template(scope: Mapping[str, Any]) -> str:
    """The template of the route that handled ``scope`` with any router prefix
    (``/api/v1/datasets/{name}``), or :data:`UNMATCHED`. Routers included with
    a prefix may report their own relative path: the literal prefix is taken
    back from the request path."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not template:
        return UNMATCHED
    path = scope.get("path", "")
    regex = getattr(route, "path_regex", None)
    if regex is None or path == template or regex.match(path):
        return template
    for i in (i for i, c in enumerate(path) if c == "/" and i > 0):
        if regex.match(path[i:]):
            return path[:i] + template
    return template


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by the
    template of the route that matched (read from the scope after routing)."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def _send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        t0 = time.perf_counter()
        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, _send)
        finally:
            self.metrics.in_progress.dec()
            self.metrics.observe(
                scope.get("method", "GET"),
                route_template(scope),
                status["code"],
                time.perf_counter() - t0,
            )


def install_metrics(
    app: FastAPI, *, catalog: Any | None = None, path: str = "/metrics"
) -> ApiMetrics:
    """Add the middleware and ``GET {path}`` to ``app`` (call before it serves);
    the metrics object is kept on ``app.state.metrics``."""
    metrics = ApiMetrics(catalog)

    def metrics_endpoint() -> Response:
        body, ctype = render(metrics.registry)
        return Response(content=body, media_type=ctype)

    app.add_api_route(path, metrics_endpoint, methods=["GET"], include_in_schema=False)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.metrics = metrics
    return metrics


__all__ = [
    "CONTENT_TYPE",
    "UNMATCHED",
    "ApiMetrics",
    "CatalogCollector",
    "MetricsMiddleware",
    "format_family",
    "install_metrics",
    "render",
    "route_template",
]

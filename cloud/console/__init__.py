"""The web console: server-rendered pages (Jinja2) plus a little vanilla JS
that talks to the REST API with the login cookie.

Pages: ``/login``, ``/datasets``, ``/datasets/{name}`` (thumbnail grid with
filters and paging), ``/datasets/{name}/samples/{id}``, ``/annotate/{task}``
(keyboard-first labeling), ``/review/{task}``, ``/tasks`` (live progress via
SSE), ``/models`` and ``/models/{id}`` (metrics, plots, lineage, Publish) and
``/store`` (versions, channels, rollouts, Promote / Rollback), ``/overview`` (the
landing page) and ``/devices[/{id}]`` (fleet state from :mod:`cloud.fleet`, live),
``/graph[/{zone}]`` (a zone's cameras, scenes, events and algorithms, scene confirm /
reject), ``/assignments`` (the re-planning service's plan per device with utilisation
bars and "why?") and ``/policies``; the dataset page has Train / Pretrain buttons
with a live bar. Pages are not part of the OpenAPI schema.
"""

from __future__ import annotations

from cloud.console._pages import mount_console

__all__ = ["mount_console"]

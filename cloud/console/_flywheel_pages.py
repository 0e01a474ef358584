"""Console pages of the flywheel and the algorithm store: ``/models``,
``/models/{id}`` (metrics, plots, lineage, Publish) and ``/store``
(algorithms, versions, channels, rollouts, Promote / Rollback).

The buttons call the REST API (``/api/v1/...``) from ``static/flywheel.js``
with the login cookie; the API enforces roles and the evaluation gate.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from cloud.catalog.models import Model

router = APIRouter(include_in_schema=False)


def _render(request: Request, name: str, user: Any, **ctx: Any) -> HTMLResponse:
    from cloud.console._pages import render

    return render(request, name, user, **ctx)


def _user(request: Request) -> Any:
    from cloud.console._pages import page_user

    return page_user(request)


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request) -> HTMLResponse:
    user = _user(request)
    with request.app.state.catalog.sessions() as session:
        rows = list(
            session.scalars(
                select(Model).order_by(Model.algorithm, Model.created_at.desc(), Model.id.desc())
            )
        )
        models = [
            {
                "id": m.id,
                "algorithm": m.algorithm,
                "version": m.version,
                "status": m.status.value,
                "accuracy": m.metrics.get("accuracy"),
                "gate": m.metrics.get("gate") or {},
                "labels": m.params.get("train_labels"),
                "created_at": m.created_at,
            }
            for m in rows
        ]
    return _render(request, "models.html", user, models=models)


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(request: Request, model_id: int = Path(ge=1, le=2**62)) -> HTMLResponse:
    from cloud.api.routes.flywheel import learning_curve_points, model_lineage
    from cloud.api.routes.models import ModelOut

    user = _user(request)
    with request.app.state.catalog.sessions() as session:
        lin = model_lineage(session, model_id)  # NotFound -> the console's error page
        m = ModelOut.model_validate(session.get(Model, model_id))
        curve = learning_curve_points(session, m.algorithm)
    detail = m.metrics.get("detail") or {}
    return _render(
        request,
        "model.html",
        user,
        m=m,
        detail=detail,
        gate=m.metrics.get("gate") or {},
        parity=m.metrics.get("parity") or {},
        lineage=lin,
        curve=curve,
    )


def _version_view(v: Any) -> dict[str, Any]:
    """What the store page shows of an ``algorithm_store.VersionInfo``."""
    m = v.manifest
    return {
        "version": v.version,
        "channels": list(v.channels),
        "metrics": dict(m.metrics),
        "targets": sorted(set(m.cost) | {e.target for e in m.engines}),
        "engines": [e.model_dump() for e in m.engines],
        "artifact": {"sha256": v.sha256, "size": v.size},
        "published_at": v.published_at.isoformat(),
    }


def _rollout_view(r: dict[str, Any]) -> dict[str, Any]:
    devices = sum(len(g["devices"]) for g in r["groups"])
    healthy = sum(g["healthy"] for g in r["groups"])
    failed = sum(g["failed"] for g in r["groups"])
    return {
        **r,
        "devices": devices,
        "healthy": healthy,
        "failed": failed,
        "fraction": (healthy / devices) if devices else 0.0,
    }


@router.get("/store", response_class=HTMLResponse)
def store_page(request: Request) -> HTMLResponse:
    from cloud.api.routes.store import SettingsStore, key_path

    user = _user(request)
    settings = request.app.state.settings
    store = SettingsStore(settings)
    algorithms = []
    for a in store.algorithms():
        algorithms.append(
            {
                "id": a["id"],
                "channels": store.channels(a["id"]),
                "versions": [_version_view(v) for v in store.versions(a["id"])],
                "rollouts": [
                    _rollout_view(r.model_dump(mode="json")) for r in store.rollouts(a["id"])
                ],
            }
        )
    return _render(
        request,
        "store.html",
        user,
        algorithms=algorithms,
        has_key=store.has_key,
        key_path=str(key_path(settings)),
    )


__all__ = ["router"]

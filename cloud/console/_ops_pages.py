"""Operations pages: ``/overview`` (tiles, events and hard samples per minute
drawn as a chart, models per version, tasks running), ``/devices`` (status,
hardware, loaded models, errors, download / engine-build progress) and
``/devices/{id}``.

The pages embed the same JSON as ``GET /api/v1/overview`` / ``/devices`` and
``static/ops.js`` draws it, then keeps it live from the SSE stream
``/api/v1/events`` (device notices of :mod:`cloud.fleet`). The fleet state
comes from Redis: when it cannot be reached the page says so (HTTP 503).
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse

from cloud.api.routes.devices import get_device, list_devices, overview

router = APIRouter(include_in_schema=False)


def _user(request: Request):  # type: ignore[no-untyped-def]
    from cloud.console._pages import page_user

    return page_user(request)


def _render(request: Request, name: str, user: object, **ctx: object) -> HTMLResponse:
    from cloud.console._pages import render

    return render(request, name, user, **ctx)  # type: ignore[arg-type]


@router.get("/overview", response_class=HTMLResponse)
def overview_page(request: Request) -> HTMLResponse:
    user = _user(request)
    with request.app.state.catalog.sessions() as session:
        data = overview(request, session)
    return _render(request, "overview.html", user, data=data.model_dump(mode="json"))


@router.get("/devices", response_class=HTMLResponse)
def devices_page(
    request: Request,
    state: str | None = Query(default=None, pattern="^(online|offline|unknown)$"),
) -> HTMLResponse:
    user = _user(request)
    rows = [d.model_dump(mode="json") for d in list_devices(request, state)]
    return _render(request, "devices.html", user, data=rows, state=state)


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device_page(
    request: Request, device_id: str = Path(max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
) -> HTMLResponse:
    user = _user(request)
    d = get_device(request, device_id)
    return _render(request, "device.html", user, device_id=d.id, data=d.model_dump(mode="json"))

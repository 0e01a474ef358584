"""Edge devices and the operations overview, read from the fleet state that
``citybrain fleet watch`` mirrors into Redis (:mod:`cloud.fleet`)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud.api.deps import SessionDep, ViewerUser
from cloud.api.errors import ERROR_RESPONSES
from cloud.catalog.models import Task, TaskStatus
from cloud.errors import NotFound, Unavailable
from cloud.fleet import DeviceRecord, FleetStore, models_by_version, rate_per_min

router = APIRouter(tags=["devices"], responses=ERROR_RESPONSES)

#: minutes of events / hard samples the overview returns for its chart
SERIES_MIN = 30


class DevicePublic(DeviceRecord):
    """An edge device: its status, what it runs, its health and rates."""


class DeviceCounts(BaseModel):
    total: int
    online: int
    offline: int
    unknown: int = Field(description="heard of (reported state, events) but no status yet")
    with_errors: int = Field(description="devices whose reported state has a last error")


class ModelVersionPublic(BaseModel):
    algorithm: str
    version: str
    devices: int = Field(description="devices that have this version loaded")
    online: int
    runtimes: list[str]


class SeriesPublic(BaseModel):
    minute: list[int] = Field(description="minutes since the epoch (UTC), oldest first")
    events: list[int] = Field(description="events received in each minute, fleet-wide")
    hard: list[int] = Field(description="hard samples stored in each minute, fleet-wide")


class OverviewPublic(BaseModel):
    devices: DeviceCounts
    models: list[ModelVersionPublic]
    events_per_min: float = Field(description="events over the last 60 s")
    hard_per_min: float = Field(description="hard samples stored over the last 60 s")
    series: SeriesPublic
    tasks_running: int
    tasks_queued: int
    tasks_running_by_kind: dict[str, int]
    rejected: dict[str, int] = Field(description="device messages the mirror rejected, by reason")
    watchers: list[str] = Field(description="fleet mirrors heard from in the last 30 s")
    at: datetime


def fleet_store(request: Request) -> FleetStore:
    """The app's fleet store (one Redis client per app, made on first use)."""
    store = getattr(request.app.state, "fleet_store", None)
    if store is None:
        import redis

        settings = request.app.state.settings
        client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=1, socket_timeout=3
        )
        store = FleetStore(client, settings.fleet_prefix, settings.fleet_history_min)
        request.app.state.fleet_store = store
    return store


def _unavailable(e: Exception) -> Unavailable:
    return Unavailable(f"cannot read the fleet state from Redis: {e}")


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.RedisError, OSError)


def list_devices(
    request: Request, state: str | None = None, now: datetime | None = None
) -> list[DevicePublic]:
    try:
        rows = fleet_store(request).all_records(now=now)
    except _redis_errors() as e:
        raise _unavailable(e) from None
    return [DevicePublic.model_validate(r.model_dump()) for r in rows if state in (None, r.state)]


def get_device(request: Request, device_id: str) -> DevicePublic:
    try:
        rows = fleet_store(request).records([device_id])
    except _redis_errors() as e:
        raise _unavailable(e) from None
    if not rows:
        raise NotFound(f"no device {device_id!r} has reported to the fleet mirror")
    return DevicePublic.model_validate(rows[0].model_dump())


def overview(request: Request, session: Session) -> OverviewPublic:
    now = datetime.now(UTC)
    store = fleet_store(request)
    try:
        records = store.all_records(now=now)
        series = store.series(SERIES_MIN, now=now)
        rejected = store.rejected()
        watchers = store.watchers(now=now)
    except _redis_errors() as e:
        raise _unavailable(e) from None
    states = Counter(r.state for r in records)
    by_status = dict(
        session.execute(
            select(Task.status, func.count())
            .where(Task.status.in_([TaskStatus.RUNNING, TaskStatus.QUEUED]))
            .group_by(Task.status)
        ).all()
    )
    by_kind = dict(
        session.execute(
            select(Task.kind, func.count())
            .where(Task.status == TaskStatus.RUNNING)
            .group_by(Task.kind)
        ).all()
    )
    return OverviewPublic(
        devices=DeviceCounts(
            total=len(records),
            online=states["online"],
            offline=states["offline"],
            unknown=states["unknown"],
            with_errors=sum(1 for r in records if r.last_error),
        ),
        models=[ModelVersionPublic(**m) for m in models_by_version(records)],
        events_per_min=round(rate_per_min(series["events"][-1], series["events"][-2], now), 2),
        hard_per_min=round(rate_per_min(series["hard"][-1], series["hard"][-2], now), 2),
        series=SeriesPublic(**series),
        tasks_running=by_status.get(TaskStatus.RUNNING, 0),
        tasks_queued=by_status.get(TaskStatus.QUEUED, 0),
        tasks_running_by_kind={_v(k): n for k, n in by_kind.items()},
        rejected=rejected,
        watchers=watchers,
        at=now,
    )


def _v(k: Any) -> str:
    return getattr(k, "value", str(k))


@router.get("/devices", response_model=list[DevicePublic])
def get_devices(
    request: Request,
    _: ViewerUser,
    state: Literal["online", "offline", "unknown"] | None = Query(
        default=None, description="only devices in this state"
    ),
) -> list[DevicePublic]:
    """Every device the fleet mirror has heard of, sorted by id."""
    return list_devices(request, state)


@router.get("/devices/{device_id}", response_model=DevicePublic)
def get_one_device(
    request: Request,
    _: ViewerUser,
    device_id: str = Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"),
) -> DevicePublic:
    return get_device(request, device_id)


@router.get("/overview", response_model=OverviewPublic)
def get_overview(request: Request, _: ViewerUser, session: SessionDep) -> OverviewPublic:
    """Devices online/offline, models per version across the fleet, events and
    hard samples per minute (with the last 30 minutes), tasks running."""
    return overview(request, session)

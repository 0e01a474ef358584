"""The fleet state in Redis: written by the mirror, read by the API.

Keys (``P`` = ``settings.fleet_prefix``, default ``citybrain:fleet``)::

    P:devices             ZSET  device id -> last seen (epoch s; 0 = never heard itself)
    P:dev:{d}             HASH  status, state, since, reported, last_seen, last_event
    P:events:{minute}     HASH  device -> events received that minute, "*" -> all
    P:hard:{minute}       HASH  device -> hard samples stored that minute, "*" -> all
    P:seen:{kind}:{id}    STRING  a counted message id (expires), so each counts once
    P:rejected            HASH  reason -> messages rejected by the mirror
    P:watchers            ZSET  mirror client id -> last heartbeat (epoch s)

``{minute}`` is minutes since the epoch; minute hashes expire after
``settings.fleet_history_min`` minutes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from cloud.fleet._state import Batch, DeviceChange, minute_of, rate_per_min
from edge_agent.protocol import (
    DeviceStatus,
    HardwareProfile,
    LoadedModel,
    ReportedState,
    StreamHealth,
)

#: how long a counted message id is remembered: redeliveries of an event come
#: within seconds; a device re-sends a hard sample after its receipt timeout
EVENT_DEDUP_S = 600
HARD_DEDUP_S = 86400
#: a mirror whose heartbeat is older than this is not watching any more
WATCHER_STALE_S = 30.0

_COUNT = """
local p, ttl = ARGV[1], tonumber(ARGV[2])
local n = 0
for i = 5, #ARGV, 4 do
  local kind, minute, dev, id = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local dttl = ARGV[3]
  if kind == 'hard' then dttl = ARGV[4] end
  if redis.call('SET', p .. ':seen:' .. kind .. ':' .. id, '1', 'NX', 'EX', dttl) then
    local k = p .. ':' .. kind .. ':' .. minute
    redis.call('HINCRBY', k, dev, 1)
    redis.call('HINCRBY', k, '*', 1)
    redis.call('EXPIRE', k, ttl)
    n = n + 1
  end
end
return n
"""


class LastEvent(BaseModel):
    event: str
    stream: str
    algorithm: str
    model_version: str
    at: datetime


class DeviceRecord(BaseModel):
    """One device as the cloud last heard of it."""

    id: str
    state: Literal["online", "offline", "unknown"] = Field(
        description="from dev/{d}/status (offline = the device said so or its last will); "
        "unknown = no status seen yet"
    )
    state_since: datetime | None = None
    last_seen: datetime | None = Field(
        default=None, description="last message the device itself sent"
    )
    agent_version: str | None = None
    hardware: HardwareProfile | None = None
    applied_revision: int | None = Field(default=None, description="from dev/{d}/reported")
    models: list[LoadedModel] = Field(default_factory=list)
    streams: list[StreamHealth] = Field(default_factory=list)
    last_error: str | None = None
    rejected: int = Field(default=0, description="messages the device rejected since it started")
    progress: dict[str, float] = Field(
        default_factory=dict, description="downloads / engine builds in progress -> 0..1"
    )
    outbox: dict[str, Any] | None = Field(
        default=None, description="hard-sample outbox (depth, dropped, oldest_age_s) if reported"
    )
    reported_at: datetime | None = None
    last_event: LastEvent | None = None
    events_per_min: float = 0.0
    hard_per_min: float = 0.0


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def _dt(v: bytes | str | None) -> datetime | None:
    if not v:
        return None
    return datetime.fromisoformat(v.decode() if isinstance(v, bytes) else v)


def _s(v: bytes | str | None) -> str | None:
    return v.decode() if isinstance(v, bytes) else v


class FleetStore:
    """Reads and writes the fleet state of one key prefix on one Redis client."""

    def __init__(self, redis: Any, prefix: str = "citybrain:fleet", history_min: int = 60):
        self.r = redis
        self.p = prefix
        self.history_min = history_min
        self._count = redis.register_script(_COUNT)

    def _dev(self, d: str) -> str:
        return f"{self.p}:dev:{d}"

    # ----------------------------------------------------------------- write

    def apply(self, batch: Batch, now: datetime | None = None) -> list[dict[str, Any]]:
        """Write ``batch``; returns the change notices to publish (one per device
        whose status or reported state changed or that was removed)."""
        now = now or datetime.now(UTC)
        devices = list(batch.devices.items())
        pipe = self.r.pipeline(transaction=False)
        for d, _c in devices:
            pipe.hmget(self._dev(d), "state", "since", "last_seen", "status")
        before = pipe.execute() if devices else []
        pipe = self.r.pipeline(transaction=True)
        notices: list[dict[str, Any]] = []
        for (d, c), (state, since, seen, old_status) in zip(devices, before, strict=True):
            key = self._dev(d)
            if c.removed:
                pipe.delete(key)
                pipe.zrem(f"{self.p}:devices", d)
                state = since = seen = old_status = None
                if not _has_data(c):
                    notices.append({"type": "device", "device": d, "removed": True})
                    continue
            fields: dict[str, str] = {}
            if c.status is not None:
                new = c.status.state
                if _s(state) == new and since:
                    fields["since"] = _s(since) or ""
                else:
                    t = c.status.at if c.status_retained else c.status_at
                    fields["since"] = _iso(t or now)
                fields["state"] = new
                fields["status"] = _keep_known(c.status, old_status).model_dump_json(by_alias=True)
            if c.reported is not None:
                fields["reported"] = c.reported.model_dump_json(by_alias=True)
            elif c.reported_cleared:
                pipe.hdel(key, "reported")
            if c.last_event is not None:
                e = c.last_event
                fields["last_event"] = LastEvent(
                    event=e.event,
                    stream=e.stream,
                    algorithm=e.algorithm,
                    model_version=e.model_version,
                    at=e.at,
                ).model_dump_json()
            last = _dt(seen)
            if c.last_seen is not None and (last is None or c.last_seen > last):
                last = c.last_seen
                fields["last_seen"] = _iso(last)
            if fields:
                pipe.hset(key, mapping=fields)
            if last is not None:
                pipe.zadd(f"{self.p}:devices", {d: last.timestamp()})
            elif fields:  # heard of, but never from the device itself (e.g. its last will)
                pipe.zadd(f"{self.p}:devices", {d: 0}, nx=True)
            if c.status is not None or c.reported is not None or c.reported_cleared or c.removed:
                notices.append({"type": "device", "device": d})
        for reason, n in batch.rejected.items():
            pipe.hincrby(f"{self.p}:rejected", reason, n)
        pipe.execute()
        if batch.counts:
            argv: list[Any] = [self.p, self.history_min * 60, EVENT_DEDUP_S, HARD_DEDUP_S]
            for cnt in batch.counts:
                argv += [cnt.kind, cnt.minute, cnt.device, cnt.id]
            self._count(args=argv)
        wanted = [n["device"] for n in notices if not n.get("removed")]
        records = {r.id: r for r in self.records(wanted, now=now)}
        for n in notices:
            rec = records.get(n["device"])
            if rec is not None:
                n["record"] = rec.model_dump(mode="json")
        return notices

    def heartbeat(self, watcher: str, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        key = f"{self.p}:watchers"
        pipe = self.r.pipeline(transaction=False)
        pipe.zadd(key, {watcher: now.timestamp()})
        pipe.zremrangebyscore(key, "-inf", now.timestamp() - 10 * WATCHER_STALE_S)
        pipe.execute()

    def forget(self, device: str) -> bool:
        """Drop a device's record (it still reappears if it reports again)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self._dev(device))
        pipe.zrem(f"{self.p}:devices", device)
        return bool(pipe.execute()[1])

    # ------------------------------------------------------------------ read

    def device_ids(self) -> list[str]:
        return sorted(_s(d) or "" for d in self.r.zrange(f"{self.p}:devices", 0, -1))

    def records(self, ids: list[str], now: datetime | None = None) -> list[DeviceRecord]:
        """The records of ``ids`` that exist, in that order."""
        if not ids:
            return []
        now = now or datetime.now(UTC)
        m = minute_of(now)
        pipe = self.r.pipeline(transaction=False)
        for d in ids:
            pipe.hgetall(self._dev(d))
        for kind in ("events", "hard"):
            for minute in (m, m - 1):
                pipe.hmget(f"{self.p}:{kind}:{minute}", ids)
        res = pipe.execute()
        hashes, counts = res[: len(ids)], res[len(ids) :]
        out = []
        for i, (d, h) in enumerate(zip(ids, hashes, strict=True)):
            if not h:
                continue
            ev = rate_per_min(int(counts[0][i] or 0), int(counts[1][i] or 0), now)
            hard = rate_per_min(int(counts[2][i] or 0), int(counts[3][i] or 0), now)
            out.append(_record(d, {_s(k): v for k, v in h.items()}, ev, hard))
        return out

    def all_records(self, now: datetime | None = None) -> list[DeviceRecord]:
        return self.records(self.device_ids(), now=now)

    def series(self, minutes: int, now: datetime | None = None) -> dict[str, list[int]]:
        """Fleet-wide counts of the last ``minutes`` whole minutes plus the
        current one, oldest first: ``{"minute": [...], "events": [...], "hard": [...]}``."""
        now = now or datetime.now(UTC)
        m = minute_of(now)
        span = list(range(m - minutes, m + 1))
        pipe = self.r.pipeline(transaction=False)
        for kind in ("events", "hard"):
            for minute in span:
                pipe.hget(f"{self.p}:{kind}:{minute}", "*")
        res = [int(v or 0) for v in pipe.execute()]
        return {"minute": span, "events": res[: len(span)], "hard": res[len(span) :]}

    def rejected(self) -> dict[str, int]:
        return {_s(k) or "": int(v) for k, v in self.r.hgetall(f"{self.p}:rejected").items()}

    def watchers(self, now: datetime | None = None) -> list[str]:
        now = now or datetime.now(UTC)
        rows = self.r.zrangebyscore(f"{self.p}:watchers", now.timestamp() - WATCHER_STALE_S, "+inf")
        return sorted(_s(w) or "" for w in rows)


def _keep_known(status: DeviceStatus, old: bytes | None) -> DeviceStatus:
    """An agent's last will (``offline``) carries no hardware profile: keep the
    one the device announced when it was online."""
    if status.hardware is not None or not old:
        return status
    try:
        prev = DeviceStatus.model_validate_json(old)
    except ValueError:
        return status
    return status.model_copy(
        update={
            "hardware": prev.hardware,
            "agent_version": status.agent_version or prev.agent_version,
        }
    )


def _has_data(c: DeviceChange) -> bool:
    return bool(c.status or c.reported or c.last_event or c.last_seen)


def _record(d: str, h: dict[str | None, bytes], ev: float, hard: float) -> DeviceRecord:
    status = DeviceStatus.model_validate_json(h["status"]) if h.get("status") else None
    rep = ReportedState.model_validate_json(h["reported"]) if h.get("reported") else None
    last_event = LastEvent.model_validate_json(h["last_event"]) if h.get("last_event") else None
    return DeviceRecord(
        id=d,
        state=status.state if status else "unknown",
        state_since=_dt(h.get("since")),
        last_seen=_dt(h.get("last_seen")),
        agent_version=status.agent_version if status else None,
        hardware=status.hardware if status else None,
        applied_revision=rep.applied_revision if rep else None,
        models=list(rep.models) if rep else [],
        streams=list(rep.streams) if rep else [],
        last_error=rep.last_error if rep else None,
        rejected=rep.rejected if rep else 0,
        progress=dict(rep.progress) if rep else {},
        outbox=_outbox(rep),
        reported_at=rep.at if rep else None,
        last_event=last_event,
        events_per_min=round(ev, 2),
        hard_per_min=round(hard, 2),
    )


def _outbox(rep: ReportedState | None) -> dict[str, Any] | None:
    box = getattr(rep, "outbox", None)
    return box.model_dump(mode="json") if box is not None else None


def models_by_version(records: list[DeviceRecord]) -> list[dict[str, Any]]:
    """(algorithm, version) -> devices loading it and their runtimes, sorted."""
    agg: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"devices": 0, "online": 0, "runtimes": set()}
    )
    for r in records:
        per: dict[tuple[str, str], set[str]] = defaultdict(set)
        for m in r.models:
            per[(m.algorithm, m.version)].add(m.runtime)
        for k, runtimes in per.items():
            a = agg[k]
            a["devices"] += 1
            a["online"] += r.state == "online"
            a["runtimes"] |= runtimes
    return [
        {"algorithm": k[0], "version": k[1], **v, "runtimes": sorted(v["runtimes"])}
        for k, v in sorted(agg.items())
    ]


def notice_json(notice: dict[str, Any]) -> str:
    return json.dumps(notice, default=str)

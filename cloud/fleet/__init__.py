"""Fleet state: what every edge device says about itself, mirrored into Redis.

:class:`FleetMirror` (``citybrain fleet watch``; the demo runs one in-process)
subscribes to ``cb/v1/dev/+/status``, ``.../reported``, ``.../events`` and
``.../hard/receipt`` (non-shared, clean session, so the broker replays every
device's retained status and reported state on connect) and writes into Redis
(:class:`FleetStore`, key layout in :mod:`cloud.fleet._store`):

- per device: status (online / offline, agent version, hardware profile),
  reported state (applied revision, loaded models + versions + runtime,
  per-stream health, last error, progress), last-seen time, last event;
- per minute (kept ``settings.fleet_history_min`` minutes): events received
  and hard samples stored, fleet-wide and per device.

Hard samples are counted from the ingest's receipts (``dev/{d}/hard/receipt``,
sent after the catalog commit), not from ``dev/{d}/hard``: a receipt is small
(ids, no image bytes) and names what was actually stored; counts are
deduplicated by sample id (and events by event id), so redeliveries and
several mirrors running side by side count each message once.

Every change is announced on the Redis pub/sub channel
``settings.events_channel`` (relayed to browsers by ``GET /api/v1/events``):
``{"type": "device", "device", "record"}`` (or ``"removed": true`` when its
retained status was cleared) and ``{"type": "fleet", "events_per_min",
"hard_per_min"}`` at most once a second.

Messages that are not JSON, fail validation, have an unknown ``schema`` or
name another device than their topic are rejected: counted per reason (in
Redis ``<prefix>:rejected`` and :attr:`FleetMirror.stats`), logged, never fatal.

Errors::

    FleetError
    └── Rejected   a message the mirror does not apply (has ``reason``, ``detail``)
"""

from __future__ import annotations

from cloud.fleet._mirror import FleetMirror, MirrorConfig, MirrorStats
from cloud.fleet._state import (
    TOPICS,
    Batch,
    FleetError,
    Kind,
    Rejected,
    RejectReason,
    Update,
    parse,
    rate_per_min,
)
from cloud.fleet._store import DeviceRecord, FleetStore, LastEvent, models_by_version

__all__ = [
    "TOPICS",
    "Batch",
    "DeviceRecord",
    "FleetError",
    "FleetMirror",
    "FleetStore",
    "Kind",
    "LastEvent",
    "MirrorConfig",
    "MirrorStats",
    "RejectReason",
    "Rejected",
    "Update",
    "models_by_version",
    "parse",
    "rate_per_min",
]

"""Parsing device messages into fleet-state updates (pure: no I/O).

:func:`parse` turns one MQTT message into an update or raises
:class:`Rejected`; :class:`Batch` folds many updates into what one Redis round
trip writes: the latest status and reported state per device (last writer
wins, in arrival order), last-seen times, the last event per device, and
per-minute counts of events and hard samples (with the message id, so that
redeliveries and several mirrors count each once).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from edge_agent.protocol import (
    PREFIX,
    DeviceStatus,
    Event,
    HardSampleReceipt,
    MessageInvalid,
    ReportedState,
    SchemaVersionError,
    decode,
)


class Kind(str, enum.Enum):
    STATUS = "status"
    REPORTED = "reported"
    EVENTS = "events"
    RECEIPT = "hard/receipt"


_DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")  # protocol.Ident

#: the subscriptions of the mirror (non-shared: every mirror sees every message)
TOPICS = {f"{PREFIX}dev/+/{k.value}": k for k in Kind}


class RejectReason(str, enum.Enum):
    TOPIC = "topic"  # not cb/v1/dev/{d}/<status|reported|events|hard/receipt>
    SCHEMA = "schema"  # unknown or missing schema version
    MALFORMED = "malformed"  # not JSON or invalid fields
    DEVICE_MISMATCH = "device_mismatch"  # payload's device differs from the topic's


class FleetError(Exception):
    """Base of the fleet-mirror errors."""


class Rejected(FleetError):
    """A message the mirror does not apply; it is counted by reason and logged."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Update:
    """One parsed message. ``message`` is None for an empty retained payload
    (the retained state was cleared: the device was removed)."""

    kind: Kind
    device: str
    message: DeviceStatus | ReportedState | Event | HardSampleReceipt | None
    retained: bool
    received_at: datetime


_MODELS = {
    Kind.STATUS: DeviceStatus,
    Kind.REPORTED: ReportedState,
    Kind.EVENTS: Event,
    Kind.RECEIPT: HardSampleReceipt,
}


def split_topic(topic: str) -> tuple[str, Kind]:
    """(device, kind) of ``cb/v1/dev/{d}/<kind>``; raises :class:`Rejected`."""
    rest = topic[len(PREFIX) :] if topic.startswith(PREFIX) else ""
    parts = rest.split("/", 2)
    if len(parts) == 3 and parts[0] == "dev" and _DEVICE_RE.match(parts[1]):
        for k in Kind:
            if parts[2] == k.value:
                return parts[1], k
    raise Rejected(RejectReason.TOPIC, f"not a device status/reported/events topic: {topic!r}")


def parse(
    topic: str, payload: bytes, *, retained: bool = False, now: datetime | None = None
) -> Update:
    """The update ``payload`` on ``topic`` means; raises :class:`Rejected`."""
    now = now or datetime.now(UTC)
    device, kind = split_topic(topic)
    if not payload:
        if kind in (Kind.STATUS, Kind.REPORTED):
            return Update(kind, device, None, retained, now)
        raise Rejected(RejectReason.MALFORMED, f"empty payload on {topic}")
    try:
        msg = decode(payload, _MODELS[kind])
    except SchemaVersionError as e:
        raise Rejected(RejectReason.SCHEMA, str(e)) from None
    except MessageInvalid as e:
        raise Rejected(RejectReason.MALFORMED, str(e)) from None
    if msg.device != device:  # type: ignore[union-attr]
        raise Rejected(
            RejectReason.DEVICE_MISMATCH,
            f"payload says device {msg.device!r} on the topic of {device!r}",  # type: ignore[union-attr]
        )
    return Update(kind, device, msg, retained, now)  # type: ignore[arg-type]


def minute_of(t: datetime) -> int:
    """Minutes since the epoch: the bucket of the per-minute counters."""
    return int(t.timestamp() // 60)


@dataclass(frozen=True)
class Count:
    kind: str  # "events" | "hard"
    minute: int
    device: str
    id: str  # message id: counted once across redeliveries and mirrors


@dataclass
class DeviceChange:
    """What one batch changes for one device (latest wins)."""

    status: DeviceStatus | None = None
    status_retained: bool = False
    status_at: datetime | None = None  # when it was received
    reported: ReportedState | None = None
    removed: bool = False  # retained status cleared: forget the device
    reported_cleared: bool = False
    last_seen: datetime | None = None
    last_event: Event | None = None


@dataclass
class Batch:
    """Updates folded for one write."""

    devices: dict[str, DeviceChange] = field(default_factory=dict)
    counts: list[Count] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.devices or self.counts or self.rejected)

    def reject(self, reason: RejectReason) -> None:
        self.rejected[reason.value] = self.rejected.get(reason.value, 0) + 1

    def _seen(self, c: DeviceChange, u: Update, at: datetime) -> None:
        # a retained message was sent earlier: its own time stamp says when
        t = at if u.retained else u.received_at
        if c.last_seen is None or t > c.last_seen:
            c.last_seen = t

    def add(self, u: Update) -> None:
        m = u.message
        if u.kind is Kind.RECEIPT:  # counts only; a receipt changes no device record
            assert isinstance(m, HardSampleReceipt)
            minute = minute_of(u.received_at)
            self.counts.extend(Count("hard", minute, u.device, sid) for sid in m.stored)
            return
        c = self.devices.setdefault(u.device, DeviceChange())
        if u.kind is Kind.STATUS:
            if m is None:
                self.devices[u.device] = DeviceChange(removed=True)
                return
            assert isinstance(m, DeviceStatus)
            c.status, c.status_retained, c.status_at = m, u.retained, u.received_at
            if m.state == "online":  # "offline" is the broker speaking (last will)
                self._seen(c, u, m.at)
        elif u.kind is Kind.REPORTED:
            if m is None:
                c.reported, c.reported_cleared = None, True
                return
            assert isinstance(m, ReportedState)
            c.reported, c.reported_cleared = m, False
            self._seen(c, u, m.at)
        else:
            assert isinstance(m, Event)
            c.last_event = m
            self._seen(c, u, m.at)
            self.counts.append(Count("events", minute_of(u.received_at), u.device, m.id))

    def merge(self, other: Batch) -> None:
        """Fold a later batch into this one (used to retry a failed write)."""
        for d, c in other.devices.items():
            mine = self.devices.get(d)
            if mine is None or c.removed:
                self.devices[d] = c
                continue
            if c.status is not None:
                mine.status, mine.status_retained, mine.status_at = (
                    c.status,
                    c.status_retained,
                    c.status_at,
                )
            if c.reported is not None or c.reported_cleared:
                mine.reported, mine.reported_cleared = c.reported, c.reported_cleared
            if c.last_event is not None:
                mine.last_event = c.last_event
            if c.last_seen is not None and (mine.last_seen is None or c.last_seen > mine.last_seen):
                mine.last_seen = c.last_seen
        self.counts.extend(other.counts)
        for r, n in other.rejected.items():
            self.rejected[r] = self.rejected.get(r, 0) + n


def rate_per_min(current: int, previous: int, now: datetime) -> float:
    """Events per minute over the last 60 s from two minute buckets: all of the
    current one plus the part of the previous one still inside the window."""
    frac = (now.timestamp() % 60) / 60
    return current + previous * (1 - frac)

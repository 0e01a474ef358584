"""Re-planning logic without I/O: when to re-plan (debounce, hysteresis, per-device
rate limit, time-window edges) and what survives a restart (last plan, revisions).

:class:`Debouncer` turns a stream of raw events into few re-plans, on an injected
clock (seconds, monotonic):

- **coalescing**: a trigger (device availability change, new version, policy change,
  time-window edge) fires ``window_s`` after the *last* trigger of a burst, and at the
  latest ``max_delay_s`` after the *first* one;
- **hysteresis**: a device that goes offline only becomes unavailable once it stayed
  offline for ``offline_grace_s``; coming back within the grace changes nothing;
- **rate limit**: a device's availability changes at most once per
  ``device_min_interval_s`` (a later change waits), so a device flapping forever
  causes at most one re-plan per interval.

Devices never heard of are unavailable (their retained status arrives as soon as the
service subscribes), except those :meth:`Debouncer.assume_available` names (the devices
of a restarted service's saved plan), which get the offline grace period.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.protocol import DesiredState

from ._models import Plan


@dataclass
class _Device:
    online: bool  # last raw status
    since: float  # when the raw status last changed
    available: bool  # effective availability (what the planner uses)
    changed_at: float | None  # when ``available`` last changed (None: never)


@dataclass
class Batch:
    """What a due re-plan is about."""

    reasons: list[str] = field(default_factory=list)
    #: True when placement must be re-solved; False when only the desired states need
    #: rebuilding (a version moved on a channel or a rollout advanced)
    resolve: bool = False


class Debouncer:
    """Coalesces triggers and filters flapping devices (see the module docstring).
    Not thread-safe: the caller holds a lock."""

    def __init__(
        self,
        *,
        window_s: float = 2.0,
        max_delay_s: float = 10.0,
        offline_grace_s: float = 30.0,
        device_min_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s < 0 or max_delay_s < window_s:
            raise ValueError("need 0 <= window_s <= max_delay_s")
        if offline_grace_s < 0 or device_min_interval_s < 0:
            raise ValueError("offline_grace_s and device_min_interval_s must not be negative")
        self.window_s = window_s
        self.max_delay_s = max_delay_s
        self.offline_grace_s = offline_grace_s
        self.device_min_interval_s = device_min_interval_s
        self.clock = clock
        self.devices: dict[str, _Device] = {}
        self._first: float | None = None
        self._last: float | None = None
        self._pending = Batch()

    # -- inputs ------------------------------------------------------------------

    def trigger(self, reason: str, *, resolve: bool = True) -> None:
        now = self.clock()
        if self._first is None:
            self._first = now
        self._last = now
        self._pending.reasons.append(reason)
        self._pending.resolve = self._pending.resolve or resolve

    def device_status(self, device: str, online: bool) -> None:
        """A raw ``online``/``offline`` status of ``device``."""
        now = self.clock()
        dev = self.devices.get(device)
        if dev is None:
            self.devices[device] = _Device(online, now, False, None)
        elif dev.online != online:
            dev.online = online
            dev.since = now
        self._evaluate(now)

    def assume_available(self, devices: Iterable[str]) -> None:
        """Devices taken as available without a status yet, as if they had just gone
        offline: a restarted service keeps the devices of its saved plan until either a
        status says ``online`` or ``offline_grace_s`` passes without one (so a restart
        does not empty every device while the retained statuses arrive)."""
        now = self.clock()
        for d in devices:
            if d not in self.devices:
                self.devices[d] = _Device(False, now, True, None)

    # -- evaluation --------------------------------------------------------------

    def _target(self, dev: _Device, now: float) -> bool:
        if dev.online:
            return True
        if dev.available and now - dev.since < self.offline_grace_s:
            return True  # hysteresis: not gone yet
        return False

    def _evaluate(self, now: float) -> None:
        for name, dev in self.devices.items():
            want = self._target(dev, now)
            if want == dev.available:
                continue
            if dev.changed_at is not None and now - dev.changed_at < self.device_min_interval_s:
                continue  # rate limit: decided again when the interval is over
            dev.available = want
            dev.changed_at = now
            self.trigger(f"device {name} {'online' if want else 'offline'}")

    def available(self) -> set[str]:
        """Devices the planner may use now."""
        self._evaluate(self.clock())
        return {d for d, x in self.devices.items() if x.available}

    def due(self) -> bool:
        now = self.clock()
        self._evaluate(now)
        if self._first is None or self._last is None:
            return False
        return now >= min(self._last + self.window_s, self._first + self.max_delay_s)

    def take(self) -> Batch | None:
        """The due batch (resetting the pending one), or ``None`` when nothing is due."""
        if not self.due():
            return None
        batch, self._pending = self._pending, Batch()
        self._first = self._last = None
        return batch

    def next_wakeup(self) -> float | None:
        """The clock value at which :meth:`due` may next become true (or a device's
        availability may change); ``None`` when nothing is pending."""
        now = self.clock()
        times: list[float] = []
        if self._first is not None and self._last is not None:
            times.append(min(self._last + self.window_s, self._first + self.max_delay_s))
        for dev in self.devices.values():
            want_change = self._target(dev, now) != dev.available
            if dev.available and not dev.online and dev.since + self.offline_grace_s > now:
                times.append(dev.since + self.offline_grace_s)
            if want_change and dev.changed_at is not None:
                times.append(max(now, dev.changed_at + self.device_min_interval_s))
        return min(times) if times else None


# -- time windows -----------------------------------------------------------------


def next_window_edge(
    active_at: Callable[[datetime], frozenset[str]], now: datetime, horizon_h: int = 24 * 8
) -> datetime | None:
    """The first top of the hour after ``now`` where the set of active policies (as
    ``active_at`` computes it) differs from the one at ``now``; policies' windows are
    whole hours on weekdays, so edges only happen there. ``None`` within the horizon."""
    here = active_at(now)
    t = now.replace(minute=0, second=0, microsecond=0)
    for _ in range(horizon_h):
        t = t + timedelta(hours=1)
        if active_at(t) != here:
            return t
    return None


def active_set(policies: Iterable[Any]) -> Callable[[datetime], frozenset[str]]:
    """``active_at`` for :func:`next_window_edge` from objects with ``id`` and
    ``active_at(datetime)`` (the knowledge graph's policies)."""
    pols = list(policies)

    def at(when: datetime) -> frozenset[str]:
        return frozenset(p.id for p in pols if p.active_at(when))

    return at


# -- persisted state --------------------------------------------------------------


class PlannerState(BaseModel):
    """What a restart must not lose: the last published plan (for churn) and each
    device's desired state (revision monotonic, unchanged states not republished)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: str = Field(default="citybrain.replan-state/1", alias="schema")
    plan: Plan | None = None
    desired: dict[str, DesiredState] = Field(default_factory=dict)
    graph_revision: int = 0

    def revisions(self) -> dict[str, int]:
        return {d: s.revision for d, s in self.desired.items()}


def load_state(path: Path) -> PlannerState:
    """The saved state, or an empty one when the file does not exist. A corrupt file is
    an error naming it (never silently replaced: revisions must stay monotonic)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return PlannerState()
    try:
        return PlannerState.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as e:
        raise ValueError(f"{path}: not a re-planner state file: {e}") from None


def save_state(path: Path, state: PlannerState) -> None:
    """Write ``state`` atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(state.model_dump_json(by_alias=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

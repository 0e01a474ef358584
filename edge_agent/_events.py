"""Event rules from the manifest, evaluated per stream by a small state machine.

``idle`` -> ``pending`` when a matching detection (label, min score, inside the
zone) appears; ``pending`` -> ``fired`` once it lasted ``min_duration_s`` (the
Event is emitted on that transition); any frame without a match -> ``idle``.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from edge_agent.protocol import Detection, Event, EventRule


class RuleState(str, enum.Enum):
    IDLE = "idle"
    PENDING = "pending"
    FIRED = "fired"


TRANSITIONS: dict[RuleState, set[RuleState]] = {
    RuleState.IDLE: {RuleState.IDLE, RuleState.PENDING},
    RuleState.PENDING: {RuleState.IDLE, RuleState.PENDING, RuleState.FIRED},
    RuleState.FIRED: {RuleState.IDLE, RuleState.FIRED},
}


def point_in_polygon(x: float, y: float, poly: list[tuple[float, float]]) -> bool:
    inside = False
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1) + x1:
            inside = not inside
    return inside


def matches(rule: EventRule, det: Detection) -> bool:
    if det.label not in rule.labels or det.score < rule.min_score:
        return False
    if rule.zone is None or det.box is None:
        return True
    cx = (det.box[0] + det.box[2]) / 2
    cy = (det.box[1] + det.box[3]) / 2
    return point_in_polygon(cx, cy, rule.zone)


class EventTracker:
    """One stream's event state for one model's rules."""

    def __init__(
        self,
        rules: list[EventRule],
        *,
        device: str,
        stream: str,
        algorithm: str,
        model_version: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.rules = rules
        self.device = device
        self.stream = stream
        self.algorithm = algorithm
        self.model_version = model_version
        self.clock = clock
        self.state = [RuleState.IDLE] * len(rules)
        self.since: list[datetime | None] = [None] * len(rules)

    def _move(self, i: int, new: RuleState) -> None:
        assert new in TRANSITIONS[self.state[i]], (self.state[i], new)
        self.state[i] = new

    def update(self, detections: list[Detection]) -> list[Event]:
        now = self.clock()
        fired: list[Event] = []
        for i, rule in enumerate(self.rules):
            hits = [d for d in detections if matches(rule, d)]
            if not hits:
                self._move(i, RuleState.IDLE)
                self.since[i] = None
                continue
            if self.state[i] == RuleState.IDLE:
                self._move(i, RuleState.PENDING)
                self.since[i] = now
            since = self.since[i] or now
            if (
                self.state[i] == RuleState.PENDING
                and (now - since).total_seconds() >= rule.min_duration_s
            ):
                self._move(i, RuleState.FIRED)
                fired.append(
                    Event(
                        id=uuid.uuid4().hex,
                        device=self.device,
                        stream=self.stream,
                        algorithm=self.algorithm,
                        model_version=self.model_version,
                        event=rule.event,
                        detections=hits,
                        started_at=since,
                        at=now,
                    )
                )
        return fired

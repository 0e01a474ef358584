"""Event rules: labels, min score, zone polygon, min duration; fires once per episode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edge_agent._events import EventTracker, RuleState, point_in_polygon
from edge_agent.protocol import Detection, EventRule

ZONE = [(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5)]


def det(label: str = "car", score: float = 0.9, box: list[float] | None = None) -> Detection:
    return Detection(label=label, score=score, box=box or [0.1, 0.1, 0.2, 0.2])


def tracker(rule: EventRule, clock: list[datetime]) -> EventTracker:
    return EventTracker(
        [rule],
        device="d1",
        stream="s1",
        algorithm="a",
        model_version="1.0.0",
        clock=lambda: clock[0],
    )


def test_point_in_polygon() -> None:
    assert point_in_polygon(0.25, 0.25, ZONE)
    assert not point_in_polygon(0.75, 0.25, ZONE)


def test_min_duration_zone_and_single_fire() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    clock = [t0]
    tr = tracker(
        EventRule(event="parked", labels=["car"], min_score=0.5, zone=ZONE, min_duration_s=2), clock
    )
    assert tr.update([det()]) == [] and tr.state == [RuleState.PENDING]
    clock[0] = t0 + timedelta(seconds=1)
    assert tr.update([det(box=[0.7, 0.7, 0.9, 0.9])]) == []  # left the zone: episode over
    assert tr.state == [RuleState.IDLE]
    clock[0] = t0 + timedelta(seconds=2)
    tr.update([det()])
    clock[0] = t0 + timedelta(seconds=4)
    (ev,) = tr.update([det(), det("person")])
    assert ev.event == "parked" and ev.started_at == t0 + timedelta(seconds=2)
    assert [d.label for d in ev.detections] == ["car"]
    clock[0] = t0 + timedelta(seconds=5)
    assert tr.update([det()]) == []  # still the same episode
    tr.update([])
    clock[0] = t0 + timedelta(seconds=8)
    assert tr.update([det()]) == []  # new episode must last 2 s again


@pytest.mark.parametrize("d", [det(score=0.3), det("person")])
def test_score_and_label_filters(d: Detection) -> None:
    tr = tracker(EventRule(event="e", labels=["car"], min_score=0.5), [datetime.now(UTC)])
    assert tr.update([d]) == []


def test_classification_without_boxes_ignores_zone() -> None:
    tr = tracker(EventRule(event="e", labels=["car"], zone=ZONE), [datetime.now(UTC)])
    (ev,) = tr.update([Detection(label="car", score=0.9)])
    assert ev.stream == "s1" and ev.device == "d1"

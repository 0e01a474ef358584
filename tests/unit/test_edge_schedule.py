"""Assignment schedules: hours and weekdays when a stream runs."""

from __future__ import annotations

from datetime import datetime

from edge_agent._agent import schedule_active
from edge_agent.protocol import ArtifactRef, Assignment, Schedule


def test_schedule_limits_when_an_assignment_runs() -> None:
    ref = ArtifactRef(sha256="a" * 64, size=1, signature="s")
    monday_9 = datetime(2026, 11, 23, 9, 30)
    base = Assignment(stream="s", source="x", algorithm="a", version="1.0.0", artifact=ref)
    assert schedule_active(base, monday_9)
    assert schedule_active(
        base.model_copy(update={"schedule": Schedule(hours=[9], days=[0])}), monday_9
    )
    assert not schedule_active(base.model_copy(update={"schedule": Schedule(hours=[10])}), monday_9)
    assert not schedule_active(
        base.model_copy(update={"schedule": Schedule(days=[5, 6])}), monday_9
    )

"""Errors of the scheduler (the tree is drawn in :mod:`scheduler`)."""

from __future__ import annotations


class SchedulerError(Exception):
    """Base of every error the scheduler reports."""


class InvalidInstance(SchedulerError):
    """An instance file or model is malformed or inconsistent (names what and where)."""


class InvalidPlan(SchedulerError):
    """A plan file is malformed, or names things its instance does not know."""


class PlanCheckFailed(SchedulerError):
    """A solver produced a plan the checker rejects; the plan is never returned."""

    def __init__(self, message: str, violations: list | None = None) -> None:
        super().__init__(message)
        self.violations = list(violations or [])

"""Exceptions of the job system (tree drawn in the package docstring)."""

from __future__ import annotations

from cloud.errors import CitybrainError, Conflict


class JobError(CitybrainError):
    """Base of the job system's errors."""


class InvalidTransition(Conflict, JobError):
    """A task status change that TASK_TRANSITIONS does not allow."""


class UnknownHandler(JobError):
    """No handler is registered for a task kind, or a handler spec cannot be loaded."""


class JobFailed(JobError):
    """Raised by a handler for a permanent failure: the task fails without retry."""


class JobStopped(Exception):
    """Raised by ``JobContext.check()`` when the handler must stop now."""


class JobCancelled(JobStopped):
    """A user asked to cancel the running task."""


class JobInterrupted(JobStopped):
    """The worker is shutting down or lost its lease; the task will be re-run."""

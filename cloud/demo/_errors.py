"""Errors of the demo (see :mod:`cloud.demo`)."""

from __future__ import annotations

from cloud.errors import CitybrainError, InvalidInput


class DemoError(CitybrainError):
    """A demo stage failed (exit 1 in --headless)."""


class PreflightError(DemoError, InvalidInput):
    """The machine is not ready (port taken, data dir not writable, no broker): exit 2."""

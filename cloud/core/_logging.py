"""Log output of the cloud services (``citybrain serve | ingest | worker |
schedule run``): plain text or JSON lines.

JSON: one object per line with ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
``msg``, any ``extra={...}`` fields of the call, and ``exc`` (the formatted
traceback) when there is one; values JSON cannot hold are written as text.
The format is ``configure_logging``'s argument, else the global
``citybrain --log-format`` option, else ``Settings.log_format``
(``CITYBRAIN_LOG_FORMAT``). The JSON formatter is the edge agent's
(``edge_agent.JsonFormatter``): one line format for devices and cloud.
"""

from __future__ import annotations

import logging
from typing import Any

from edge_agent import JsonFormatter

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_cli_format: list[str | None] = [None]  # set by the global --log-format option


def set_cli_format(fmt: str | None) -> None:
    """Remember the global ``--log-format`` option for :func:`configure_logging`."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"log format must be text or json, got {fmt!r}")
    _cli_format[0] = fmt


def resolve_format(fmt: str | None = None) -> str:
    """``fmt``, else the ``--log-format`` option, else ``Settings.log_format``."""
    if fmt is None:
        fmt = _cli_format[0]
    if fmt is None:
        from cloud.core.config import get_settings

        fmt = get_settings().log_format
    if fmt not in FORMATS:
        raise ValueError(f"log format must be text or json, got {fmt!r}")
    return fmt


def configure_logging(fmt: str | None = None, level: str | int = "INFO", **fields: Any) -> str:
    """Route the root logger to stderr in the resolved format (replacing its
    handlers); returns that format. ``fields`` are added to every JSON line."""
    fmt = resolve_format(fmt)
    if isinstance(level, str):
        level = getattr(logging, level.upper(), logging.INFO)
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter(**fields) if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    return fmt

"""Log output of the cloud services (``citybrain serve | ingest | worker |
schedule run``): plain text or JSON lines.

JSON: one object per line with ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
``msg``, any ``extra={...}`` fields of the call, and ``exc`` (the formatted
traceback) when there is one; values JSON cannot hold are written as text.
The format is ``configure_logging``'s argument, else the global
``citybrain --log-format`` option, else ``Settings.log_format``
(``CITYBRAIN_LOG_FORMAT``). The edge agent has its own copy
(``edge_agent._logging``), since it cannot import cloud.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: attributes every LogRecord has; anything else came from ``extra``
_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName", "color_message"}

_cli_format: list[str | None] = [None]  # set by the global --log-format option


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``fields`` (e.g. ``service``) are added to each."""

    def __init__(self, **fields: Any) -> None:
        super().__init__()
        self.fields = fields

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **self.fields,
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD and not k.startswith("_") and k not in out:
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


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

"""Log output of ``citybrain-edge``: plain text or JSON lines.

JSON: one object per line with ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
``msg``, ``device``, any ``extra={...}`` fields of the call, and ``exc`` (the
formatted traceback) when there is one. Non-JSON values are written as text.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: attributes every LogRecord has; anything else came from ``extra``
_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName", "color_message"}  # uvicorn's colour copy


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``fields`` (e.g. ``device``, ``service``) are added
    to each. The cloud services use this one too (``cloud.core._logging``)."""

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


def configure_logging(fmt: LogFormat, level: str | int = "INFO", **fields: Any) -> None:
    """Route the root logger to stderr in ``fmt`` (replacing earlier handlers)."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {fmt!r}")
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

"""Pins and exclusions: what the knowledge graph's policies add to an instance.

They are not part of ``citybrain.schedule-instance/1`` (that format stays exactly as
specified); :func:`knowledge_graph.export_extensions` writes them as a separate
document, which :func:`scheduler.solve` and :func:`scheduler.check_plan` take as an
optional argument::

    {"citybrain.pins/1": [{"camera", "algorithm", "priority"?, "policy"?}],
     "citybrain.exclusions/1": [{"algorithm", "camera"?, "device"?, "policy"?}]}

- A **pin** forces ``algorithm`` on ``camera``'s stream (on some device reaching it).
  Pins are placed first, in decreasing ``priority``, before any demand; a pinned
  assignment needs no scene match and no demand (the operator asked for it) and it
  serves whatever demands it would serve anyway. A pin that cannot be placed (unknown
  camera or algorithm, no reachable device, no cost profile, excluded, no capacity
  left) becomes an ``unserved`` entry ``{"camera", "event": "pin:<algorithm>",
  "reason": "infeasible pin: ..."}``. Pins add nothing to the objective.
- An **exclusion** with a ``camera`` forbids ``algorithm`` on that camera (on every
  device); one with only a ``device`` forbids ``algorithm`` on that device (for every
  camera) — the reading of :func:`knowledge_graph.explain`. Exclusions naming cameras,
  algorithms or devices the instance does not have forbid nothing (a device that is
  offline is simply absent).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ._errors import InvalidInstance

PINS_KEY = "citybrain.pins/1"
EXCLUSIONS_KEY = "citybrain.exclusions/1"
PIN_EVENT_PREFIX = "pin:"
INFEASIBLE_PIN = "infeasible pin"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PinSpec(_Model):
    camera: str = Field(min_length=1)
    algorithm: str = Field(min_length=1)
    priority: float = Field(default=1.0, gt=0)
    policy: str | None = None


class ExclusionSpec(_Model):
    algorithm: str = Field(min_length=1)
    camera: str | None = None
    device: str | None = None
    policy: str | None = None

    @model_validator(mode="after")
    def _target(self) -> ExclusionSpec:
        if self.camera is None and self.device is None:
            raise ValueError(f"exclusion of {self.algorithm!r} names neither camera nor device")
        return self


class Extensions(BaseModel):
    """Pins and exclusions for one solve."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    pins: list[PinSpec] = Field(default_factory=list, alias=PINS_KEY)
    exclusions: list[ExclusionSpec] = Field(default_factory=list, alias=EXCLUSIONS_KEY)

    def is_empty(self) -> bool:
        return not self.pins and not self.exclusions

    def to_doc(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def excluded(self, camera: str, algorithm: str, device: str) -> str | None:
        """The policy (or ``"policy"``) excluding this placement, or ``None``."""
        for x in self.exclusions:
            if x.algorithm != algorithm:
                continue
            if x.camera is not None:
                if x.camera == camera:
                    return x.policy or "policy"
            elif x.device == device:
                return x.policy or "policy"
        return None


def pin_event(algorithm: str) -> str:
    """The ``event`` of an infeasible pin's ``unserved`` entry."""
    return PIN_EVENT_PREFIX + algorithm


def parse_extensions(data: Any, source: str = "extensions") -> Extensions:
    """Validate a decoded extensions document; :class:`InvalidInstance` names the field."""
    if data is None:
        return Extensions()
    if isinstance(data, Extensions):
        return data
    if not isinstance(data, dict):
        raise InvalidInstance(f"{source}: expected a JSON object")
    unknown = sorted(set(data) - {PINS_KEY, EXCLUSIONS_KEY})
    if unknown:
        raise InvalidInstance(
            f"{source}: unknown key {unknown[0]!r} (expected {PINS_KEY!r}, {EXCLUSIONS_KEY!r})"
        )
    try:
        return Extensions.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise InvalidInstance(f"{source}: {loc}: {msg}") from None


def load_extensions(path: str | Path) -> Extensions:
    """Read and validate an extensions file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInstance(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInstance(f"{p}: cannot read: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInstance(f"{p}: not JSON: {e}") from None
    return parse_extensions(data, str(p))

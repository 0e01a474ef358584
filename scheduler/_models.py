"""Pydantic models of the offline instance and of a plan (../shared/schemas/README.md).

``citybrain.schedule-instance/1`` and ``citybrain.schedule-plan/1`` are read and
written exactly; unknown fields are rejected so that a typo is an error rather
than a silently ignored setting.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._errors import InvalidInstance, InvalidPlan
from ._zones import match_policies, zone_glob_error, zone_path_error

INSTANCE_SCHEMA = "citybrain.schedule-instance/1"
PLAN_SCHEMA = "citybrain.schedule-plan/1"

_Id = Field(min_length=1, max_length=256)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


class CostProfile(_Model):
    """Cost of one algorithm on one hardware target."""

    ms_per_frame: float = Field(gt=0)
    mem_mb: float = Field(ge=0)

    _f = field_validator("ms_per_frame", "mem_mb")(_finite)


class Algorithm(_Model):
    id: str = _Id
    version: str = Field(min_length=1)
    detects: list[str] = Field(min_length=1)
    scenes: list[str] = Field(default_factory=list)
    fps: float = Field(gt=0)
    #: hardware target -> cost; an algorithm with none is valid but can never be placed
    cost: dict[str, CostProfile] = Field(default_factory=dict)

    _f = field_validator("fps")(_finite)


class Camera(_Model):
    id: str = _Id
    zone: str
    scenes: list[str] = Field(default_factory=list)

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        err = zone_path_error(v)
        if err:
            raise ValueError(err)
        return v


class Capacity(_Model):
    ms_per_s: float = Field(gt=0)
    mem_mb: float = Field(gt=0)
    streams: int = Field(ge=1)

    _f = field_validator("ms_per_s", "mem_mb")(_finite)


class Device(_Model):
    id: str = _Id
    target: str = Field(min_length=1)
    capacity: Capacity
    cameras: list[str] = Field(default_factory=list)


class Policy(_Model):
    zone: str
    events: list[str] = Field(min_length=1)
    priority: float = Field(gt=0)

    _f = field_validator("priority")(_finite)

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        err = zone_glob_error(v)
        if err:
            raise ValueError(err)
        return v


def _dupes(ids: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for i in ids:
        if i in seen and i not in out:
            out.append(i)
        seen.add(i)
    return out


class Instance(_Model):
    """An offline scheduling instance; validation checks cross references."""

    schema_: Literal["citybrain.schedule-instance/1"] = Field(
        default=INSTANCE_SCHEMA, alias="schema"
    )
    algorithms: list[Algorithm] = Field(default_factory=list)
    cameras: list[Camera] = Field(default_factory=list)
    devices: list[Device] = Field(default_factory=list)
    policies: list[Policy] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Instance:
        for what, items in (
            ("algorithms", self.algorithms),
            ("cameras", self.cameras),
            ("devices", self.devices),
        ):
            d = _dupes([x.id for x in items])
            if d:
                raise ValueError(f"{what}: duplicate id {d[0]!r}")
        cams = {c.id for c in self.cameras}
        for i, dev in enumerate(self.devices):
            for cid in dev.cameras:
                if cid not in cams:
                    raise ValueError(f"devices[{i}] ({dev.id!r}).cameras: unknown camera {cid!r}")
            d = _dupes(dev.cameras)
            if d:
                raise ValueError(f"devices[{i}] ({dev.id!r}).cameras: camera {d[0]!r} listed twice")
        covering = match_policies([p.zone for p in self.policies], {c.zone for c in self.cameras})
        used = {i for idx in covering.values() for i in idx}
        for i, pol in enumerate(self.policies):
            if i not in used:
                raise ValueError(
                    f"policies[{i}].zone: {pol.zone!r} matches no camera zone (unknown zone)"
                )
        return self


class Assignment(_Model):
    camera: str
    algorithm: str
    version: str
    device: str


class DemandRef(_Model):
    camera: str
    event: str


class UnservedDemand(_Model):
    camera: str
    event: str
    reason: str = Field(min_length=1)


class SolverInfo(_Model):
    name: str
    seconds: float = Field(ge=0)
    optimal: bool
    bound: float | None = None


class Plan(_Model):
    schema_: Literal["citybrain.schedule-plan/1"] = Field(default=PLAN_SCHEMA, alias="schema")
    assignments: list[Assignment] = Field(default_factory=list)
    served: list[DemandRef] = Field(default_factory=list)
    unserved: list[UnservedDemand] = Field(default_factory=list)
    objective: float
    solver: SolverInfo

    def to_json(self) -> str:
        """The plan file's text (indented when small enough to be read by a person)."""
        small = len(self.assignments) + len(self.served) + len(self.unserved) <= 5000
        return self.model_dump_json(by_alias=True, indent=1 if small else None)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def _read_json(path: Path, exc: type[Exception]) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise exc(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise exc(f"{path}: cannot read: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise exc(f"{path}: not JSON: {e}") from None


def parse_instance(data: Any, source: str = "instance") -> Instance:
    """Validate a decoded JSON instance; :class:`InvalidInstance` names the field."""
    if not isinstance(data, dict):
        raise InvalidInstance(f"{source}: expected a JSON object")
    if data.get("schema") != INSTANCE_SCHEMA:
        raise InvalidInstance(
            f"{source}: schema: expected {INSTANCE_SCHEMA!r}, got {data.get('schema')!r}"
        )
    try:
        return Instance.model_validate(data)
    except ValidationError as e:
        raise InvalidInstance(f"{source}: {_first_error(e)}") from None


def parse_plan(data: Any, source: str = "plan") -> Plan:
    """Validate a decoded JSON plan; :class:`InvalidPlan` names the field."""
    if not isinstance(data, dict):
        raise InvalidPlan(f"{source}: expected a JSON object")
    if data.get("schema") != PLAN_SCHEMA:
        raise InvalidPlan(f"{source}: schema: expected {PLAN_SCHEMA!r}, got {data.get('schema')!r}")
    try:
        return Plan.model_validate(data)
    except ValidationError as e:
        raise InvalidPlan(f"{source}: {_first_error(e)}") from None


def load_instance(path: str | Path) -> Instance:
    """Read and validate an instance file."""
    return parse_instance(_read_json(Path(path), InvalidInstance), str(path))


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file."""
    return parse_plan(_read_json(Path(path), InvalidPlan), str(path))

"""Operator policies: which events must be watched in which zones, when, and with which
pins and exclusions."""

from __future__ import annotations

import enum
import re
import uuid
from datetime import datetime
from fnmatch import fnmatchcase
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from knowledge_graph._errors import PolicyError


class Weekday(str, enum.Enum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"


_DAYS = list(Weekday)
_GLOB_RE = re.compile(r"^[A-Za-z0-9_.\-*?\[\]!/]{1,512}$")


def _match(p: tuple[str, ...], z: tuple[str, ...], i: int, j: int) -> bool:
    if i == len(p):
        return True  # matched z[:j]: the zone itself or one of its ancestors
    seg = p[i]
    if seg == "**":
        return any(_match(p, z, i + 1, k) for k in range(j, len(z) + 1))
    if j == len(z):
        return False
    return fnmatchcase(z[j], seg) and _match(p, z, i + 1, j + 1)


@lru_cache(maxsize=65536)
def zone_matches(glob: str, zone: str) -> bool:
    """Whether a policy's zone glob covers a zone path. The same rules as the
    scheduler's (``scheduler._zones``), so that what the graph explains is what the
    solver serves:

    - matched segment by segment with ``fnmatchcase``: ``*``, ``?``, ``[...]`` stay
      within one segment (``longhua/*`` matches ``longhua/street-12``);
    - a whole ``**`` segment matches any number of segments, zero included;
    - a glob that matches a zone covers every zone inside it (``longhua`` covers
      ``longhua/street-12``; ``longhua/*`` covers ``longhua/street-12/north``).

    Case-sensitive."""
    p = tuple(glob.split("/"))
    if all(seg == "**" for seg in p):
        return True
    return _match(p, tuple(zone.split("/")), 0, 0)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HourWindow(_Model):
    """Hours of the day ``[start, end)``; ``start > end`` wraps past midnight (22-6)."""

    start: int = Field(ge=0, le=23)
    end: int = Field(ge=1, le=24)

    @model_validator(mode="after")
    def _not_empty(self) -> HourWindow:
        if self.start == self.end:
            raise ValueError(f"hour window {self.start}-{self.end} is empty")
        return self

    def contains(self, hour: int) -> bool:
        if self.start < self.end:
            return self.start <= hour < self.end
        return hour >= self.start or hour < self.end

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


class Pin(_Model):
    """Always run ``algorithm`` on ``camera``."""

    camera: str = Field(min_length=1)
    algorithm: str = Field(min_length=1)


class Exclusion(_Model):
    """Never run ``algorithm`` on ``camera`` and/or never on ``device``."""

    algorithm: str = Field(min_length=1)
    camera: str | None = None
    device: str | None = None

    @model_validator(mode="after")
    def _target(self) -> Exclusion:
        if self.camera is None and self.device is None:
            raise ValueError(f"exclusion of {self.algorithm!r} names neither camera nor device")
        return self


def _new_id() -> str:
    return "pol-" + uuid.uuid4().hex[:10]


class Policy(_Model):
    """What must be watched where: every camera in a zone matching ``zone`` should be
    watched for each of ``events``, worth ``priority`` per (camera, event), during the
    ``hours`` windows on ``days`` (empty = always). Times are the wall clock of the
    datetime the policy is evaluated at."""

    id: str = Field(default_factory=_new_id, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
    zone: str = Field(description="glob over zone paths, e.g. longhua/*")
    events: list[str] = Field(default_factory=list)
    priority: float = Field(gt=0)
    hours: list[HourWindow] = Field(default_factory=list, description="empty = all day")
    days: list[Weekday] = Field(default_factory=list, description="empty = every day")
    pins: list[Pin] = Field(default_factory=list)
    exclusions: list[Exclusion] = Field(default_factory=list)
    description: str = ""

    @field_validator("zone")
    @classmethod
    def _glob(cls, v: str) -> str:
        if not _GLOB_RE.match(v) or "//" in v or v.startswith("/") or v.endswith("/"):
            raise ValueError(
                f"invalid zone glob {v!r}: zone path segments joined by '/', with * ? [] wildcards"
            )
        return v

    @field_validator("events")
    @classmethod
    def _unique_events(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"events listed twice: {v}")
        return v

    @model_validator(mode="after")
    def _something(self) -> Policy:
        if not self.events and not self.pins and not self.exclusions:
            raise ValueError("a policy needs events, pins or exclusions")
        return self

    def active_at(self, at: datetime) -> bool:
        """Whether ``at`` falls in the policy's days and hours (wall clock of ``at``)."""
        if self.days and _DAYS[at.weekday()] not in self.days:
            return False
        if self.hours and not any(w.contains(at.hour) for w in self.hours):
            return False
        return True

    def matches_zone(self, zone: str) -> bool:
        return zone_matches(self.zone, zone)


def parse_hours(text: str) -> list[HourWindow]:
    """``"7-19"`` or ``"7-12,14-19"`` or ``"22-6"`` -> hour windows."""
    out: list[HourWindow] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d{1,2})\s*-\s*(\d{1,2})\s*", part)
        if not m:
            raise PolicyError(f"invalid hours {text!r}: use START-END, e.g. 7-19", field="hours")
        start, end = int(m.group(1)), int(m.group(2))
        if not (0 <= start <= 23 and 1 <= end <= 24) or start == end:
            raise PolicyError(
                f"invalid hours {part.strip()!r}: start 0-23, end 1-24, start != end",
                field="hours",
            )
        out.append(HourWindow(start=start, end=end))
    return out


def parse_days(text: str) -> list[Weekday]:
    """``"mon-fri"``, ``"sat,sun"``, ``"mon-wed,fri"``, ``"fri-mon"`` -> weekdays."""
    names = {d.value: i for i, d in enumerate(_DAYS)}
    days: list[Weekday] = []
    for part in text.lower().split(","):
        part = part.strip()
        bounds = part.split("-")
        if len(bounds) not in (1, 2) or any(b not in names for b in bounds):
            raise PolicyError(
                f"invalid days {text!r}: use mon..sun, ranges like mon-fri, lists like sat,sun",
                field="days",
            )
        a, b = names[bounds[0]], names[bounds[-1]]
        i = a
        while True:
            if _DAYS[i] not in days:
                days.append(_DAYS[i])
            if i == b:
                break
            i = (i + 1) % 7
    return sorted(days, key=_DAYS.index)

"""Rollout lifecycle: states, the allowed-transitions table, device groups and
the records a rollout is reported as."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edge_agent.protocol import ReportedState

from ._errors import InvalidTransition, StoreError


class RolloutState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


#: state -> states it may move to. Terminal states map to nothing.
ALLOWED_TRANSITIONS: dict[RolloutState, frozenset[RolloutState]] = {
    RolloutState.PENDING: frozenset({RolloutState.RUNNING, RolloutState.ABORTED}),
    RolloutState.RUNNING: frozenset(
        {RolloutState.PAUSED, RolloutState.SUCCEEDED, RolloutState.ABORTED}
    ),
    RolloutState.PAUSED: frozenset({RolloutState.RUNNING, RolloutState.ABORTED}),
    RolloutState.ABORTED: frozenset({RolloutState.ROLLED_BACK}),
    RolloutState.SUCCEEDED: frozenset(),
    RolloutState.ROLLED_BACK: frozenset(),
}

#: states in which a rollout holds its channel (devices of started groups get its version)
ACTIVE_STATES = frozenset({RolloutState.PENDING, RolloutState.RUNNING, RolloutState.PAUSED})


def check_transition(rollout_id: int, old: RolloutState, new: RolloutState) -> None:
    if new not in ALLOWED_TRANSITIONS[old]:
        allowed = sorted(s.value for s in ALLOWED_TRANSITIONS[old]) or ["nothing (terminal)"]
        raise InvalidTransition(
            f"rollout {rollout_id}: cannot go from {old.value} to {new.value}; "
            f"allowed from {old.value}: {', '.join(allowed)}",
            field="state",
        )


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceReport(_Model):
    """What a device says about one algorithm: which version runs and whether healthy."""

    device: str = Field(min_length=1)
    algorithm: str = Field(min_length=1)
    version: str = Field(min_length=1)
    healthy: bool
    error: str | None = None

    @classmethod
    def from_reported(cls, state: ReportedState, algorithm: str) -> DeviceReport | None:
        """Derive a report from a device's ``ReportedState`` (None if it does not
        run ``algorithm``). Unhealthy when a stream errors or ``last_error`` is set."""
        loaded = [m for m in state.models if m.algorithm == algorithm]
        if not loaded:
            return None
        errors = [s.error or s.stream for s in state.streams if s.state == "error"]
        if state.last_error:
            errors.append(state.last_error)
        return cls(
            device=state.device,
            algorithm=algorithm,
            version=loaded[0].version,
            healthy=not errors,
            error="; ".join(errors) or None,
        )


class GroupProgress(_Model):
    name: str
    devices: list[str]
    started: bool
    healthy: int
    failed: int
    waiting: int


class Rollout(_Model):
    id: int
    algorithm: str
    version: str
    channel: str
    from_version: str | None
    state: RolloutState
    current_group: int
    success_gate: float
    error_gate: float
    groups: list[GroupProgress]
    created_at: datetime
    updated_at: datetime
    reason: str = ""


class Transition(_Model):
    seq: int
    at: datetime
    algorithm: str
    kind: str
    subject: str
    from_value: str | None
    to_value: str | None
    reason: str


def _order(devices: Sequence[str], salt: str) -> list[str]:
    return sorted(devices, key=lambda d: hashlib.sha256(f"{salt}/{d}".encode()).hexdigest())


def resolve_groups(
    groups: Sequence[Mapping[str, Any]], devices: Sequence[str] | None, salt: str
) -> list[tuple[str, list[str]]]:
    """Turn group specs into (name, devices) lists.

    A spec is ``{"name", "devices": [...]}`` or ``{"name", "percent": p}``; percent
    groups take consecutive shares of ``devices`` in a stable pseudo-random order
    (seeded by ``salt``), so the same device lands in the same group every time.
    """
    if not groups:
        raise StoreError("groups: a rollout needs at least one group", field="groups")
    pool = _order(list(dict.fromkeys(devices or [])), salt)
    out: list[tuple[str, list[str]]] = []
    seen: dict[str, str] = {}
    cum_pct = 0.0
    taken = 0
    for i, spec in enumerate(groups):
        if not isinstance(spec, Mapping):
            raise StoreError(f"groups[{i}]: expected an object, got {spec!r}", field="groups")
        name = str(spec.get("name") or f"group-{i + 1}")
        unknown = set(spec) - {"name", "devices", "percent"}
        if unknown:
            raise StoreError(f"groups[{i}]: unknown keys {sorted(unknown)}", field="groups")
        if ("devices" in spec) == ("percent" in spec):
            raise StoreError(
                f"groups[{i}] ({name}): give exactly one of 'devices' or 'percent'", field="groups"
            )
        if "devices" in spec:
            members = [str(d) for d in spec["devices"]]
        else:
            try:
                pct = float(spec["percent"])
            except (TypeError, ValueError):
                raise StoreError(
                    f"groups[{i}] ({name}): percent must be a number", field="groups"
                ) from None
            if not 0 < pct <= 100:
                raise StoreError(
                    f"groups[{i}] ({name}): percent must be in (0, 100], got {pct}",
                    field="groups",
                )
            if not pool:
                raise StoreError(
                    f"groups[{i}] ({name}): percentage groups need the device list",
                    field="devices",
                )
            cum_pct += pct
            if cum_pct > 100 + 1e-9:
                raise StoreError(f"groups: percentages add up to {cum_pct:g} > 100", field="groups")
            end = min(len(pool), max(taken + 1, round(len(pool) * cum_pct / 100)))
            members = pool[taken:end]
            taken = end
        if not members:
            raise StoreError(f"groups[{i}] ({name}): the group has no devices", field="groups")
        for d in members:
            if d in seen:
                raise StoreError(
                    f"groups: device {d!r} is in both {seen[d]!r} and {name!r}", field="groups"
                )
            seen[d] = name
        out.append((name, members))
    return out

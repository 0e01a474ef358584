"""From a plan to per-device desired states (``cb/v1/dev/{d}/desired``).

Each assignment (camera, algorithm, device) becomes an
:class:`edge_agent.protocol.Assignment` on that device: ``stream`` = the camera,
``source`` = the camera's video source (the graph's camera attribute ``source``),
``version`` = what the store says the device should run on ``channel`` (a rollout's
version for devices in its started groups, else the channel's), falling back to the
plan's version, ``artifact`` = that version's package in the store, ``fps`` = the
algorithm's rate. A device keeps its revision (and its previous state object, so it is
not republished) when its assignments did not change; otherwise its revision is the
previous one + 1 (monotonic). Devices that lost every assignment get an empty list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_agent.protocol import ArtifactRef, Assignment, DesiredState

from ._models import Plan


class _Store(Protocol):
    def version_for(self, algorithm: str, channel: str, device_id: str) -> str | None: ...

    def artifact_ref(self, algorithm: str, version: str) -> ArtifactRef: ...


@dataclass
class DesiredBuild:
    """Desired states of every device, which of them changed, and what was left out."""

    states: dict[str, DesiredState]
    changed: list[str]
    #: "camera/algorithm on device: why" for assignments that could not be expressed
    skipped: list[str] = field(default_factory=list)


def _content(state: DesiredState) -> list[dict[str, Any]]:
    return [a.model_dump(mode="json") for a in state.assignments]


def build_desired(
    plan: Plan,
    store: _Store,
    *,
    channel: str = "stable",
    sources: Mapping[str, str],
    fps: Mapping[str, float] | None = None,
    previous: Mapping[str, DesiredState] | None = None,
    previous_revisions: Mapping[str, int] | None = None,
    devices: Iterable[str] = (),
) -> DesiredBuild:
    """Desired states for the plan's devices, ``devices`` and every device of
    ``previous`` (those without assignments get an empty list).

    An assignment whose camera has no source, or whose algorithm has no published
    version in the store, is left out and listed in ``skipped`` (never a crash; the
    rest of the city still gets its states)."""
    from algorithm_store import NotFound

    previous = previous or {}
    revs = dict(previous_revisions or {})
    for d, st in previous.items():
        revs[d] = max(revs.get(d, -1), st.revision)
    per_dev: dict[str, list[Assignment]] = {}
    for d in [*devices, *previous]:
        per_dev.setdefault(d, [])
    skipped: list[str] = []
    refs: dict[tuple[str, str], ArtifactRef | None] = {}
    versions: dict[tuple[str, str], str] = {}
    for a in plan.assignments:
        per_dev.setdefault(a.device, [])
        where = f"{a.camera}/{a.algorithm} on {a.device}"
        src = sources.get(a.camera)
        if not src:
            skipped.append(f"{where}: camera {a.camera} has no source")
            continue
        # a store that fails (locked, unreadable) raises: better no new states than
        # empty ones; only "not published" leaves one assignment out
        vkey = (a.algorithm, a.device)
        if vkey not in versions:  # one store query per (algorithm, device), not per stream
            versions[vkey] = store.version_for(a.algorithm, channel, a.device) or a.version
        version = versions[vkey]
        key = (a.algorithm, version)
        if key not in refs:
            try:
                refs[key] = store.artifact_ref(a.algorithm, version)
            except (NotFound, LookupError):
                refs[key] = None
        ref = refs[key]
        if ref is None:
            skipped.append(f"{where}: {a.algorithm} {version} is not published in the store")
            continue
        try:
            asg = Assignment(
                stream=a.camera,
                source=src,
                algorithm=a.algorithm,
                version=version,
                artifact=ref,
                fps=(fps or {}).get(a.algorithm, 2.0),
            )
        except ValueError as e:
            skipped.append(f"{where}: {e}")
            continue
        per_dev[a.device].append(asg)
    states: dict[str, DesiredState] = {}
    changed: list[str] = []
    for d in sorted(per_dev):
        asgs = sorted(per_dev[d], key=lambda x: (x.stream, x.algorithm))
        old = previous.get(d)
        if old is not None and _content(old) == [x.model_dump(mode="json") for x in asgs]:
            states[d] = old
            continue
        try:
            states[d] = DesiredState(device=d, revision=revs.get(d, 0) + 1, assignments=asgs)
        except ValueError as e:  # a device id the wire contract cannot carry
            skipped.append(f"device {d}: {e}")
            continue
        changed.append(d)
    return DesiredBuild(states, changed, skipped)


def plan_to_desired(
    plan: Plan,
    store: _Store,
    *,
    channel: str = "stable",
    sources: Mapping[str, str],
    previous_revisions: Mapping[str, int] | None = None,
    previous: Mapping[str, DesiredState] | None = None,
    fps: Mapping[str, float] | None = None,
    devices: Iterable[str] = (),
) -> dict[str, DesiredState]:
    """``device -> DesiredState`` for ``plan`` (see :func:`build_desired`)."""
    return build_desired(
        plan,
        store,
        channel=channel,
        sources=sources,
        fps=fps,
        previous=previous,
        previous_revisions=previous_revisions,
        devices=devices,
    ).states

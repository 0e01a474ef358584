"""Why an algorithm is (or is not) applicable to, or placed on, a camera."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from knowledge_graph._errors import GraphError
from knowledge_graph._ontology import NodeType

if TYPE_CHECKING:
    from knowledge_graph._graph import CityGraph
    from knowledge_graph._policy import Policy

N = NodeType


class Reason(str, enum.Enum):
    """The outcome of :func:`explain`, checked in this order."""

    NO_SCENE_MATCH = "no_scene_match"  # no scene in common (and not pinned)
    NO_POLICY_EVENT = "no_policy_event"  # no active policy for the zone asks for what it detects
    EXCLUDED = "excluded"  # a policy excludes it on this camera / on every usable device
    NO_DEVICE = "no_device"  # no device reaches the camera
    NO_COST_PROFILE = "no_cost_profile"  # no cost profile for any reachable device's target
    APPLICABLE = "applicable"  # all of the above pass (no placement given)
    PLACED = "placed"  # the placement runs it on this camera
    CAPACITY = "capacity"  # the placement left its demands unserved for lack of capacity
    UNSERVED = "unserved"  # the placement left them unserved for another reason it gives
    SERVED_BY_OTHER = "served_by_other"  # the placement serves those demands with others
    NOT_PLACED = "not_placed"  # the placement does not run it and says nothing more


class _PlanRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    camera: str
    event: str | None = None
    algorithm: str | None = None
    device: str | None = None
    version: str | None = None
    reason: str | None = None


class _Plan(BaseModel):
    model_config = ConfigDict(extra="allow")
    assignments: list[_PlanRow] = Field(default_factory=list)
    served: list[_PlanRow] = Field(default_factory=list)
    unserved: list[_PlanRow] = Field(default_factory=list)


class Explanation(BaseModel):
    """A structured reason and one sentence saying it."""

    camera: str
    algorithm: str
    version: str
    reason: Reason
    applicable: bool = Field(description="scene, policy, exclusion, device and cost checks pass")
    placed: bool | None = Field(default=None, description="None when no placement was given")
    device: str | None = Field(default=None, description="where the placement runs it")
    sentence: str
    camera_zone: str | None = None
    camera_scenes: list[str] = Field(default_factory=list)
    algorithm_scenes: list[str] = Field(default_factory=list)
    algorithm_detects: list[str] = Field(default_factory=list)
    zone_events: list[str] = Field(
        default_factory=list, description="events active policies ask for in the camera's zone"
    )
    policy_events: list[str] = Field(
        default_factory=list, description="of those, the ones the algorithm detects"
    )
    policies: list[str] = Field(default_factory=list, description="active policies involved")
    pinned_by: list[str] = Field(default_factory=list)
    excluded_by: list[str] = Field(default_factory=list)
    devices: dict[str, str | None] = Field(
        default_factory=dict, description="reachable device -> its hardware target"
    )
    cost_targets: list[str] = Field(default_factory=list)
    usable_devices: list[str] = Field(default_factory=list)
    justifications: list[dict[str, Any]] = Field(default_factory=list)
    unserved: list[dict[str, Any]] = Field(default_factory=list)
    served_by: list[str] = Field(default_factory=list)


def _names(items: list[str] | set[str]) -> str:
    items = list(items)
    return ", ".join(items) if items else "none"


def explain(
    graph: CityGraph,
    camera: str,
    algorithm: str,
    *,
    placement: Mapping[str, Any] | None = None,
    at: datetime | None = None,
    policies: list[Policy] | None = None,
) -> Explanation:
    """Why ``algorithm`` is or is not applicable to ``camera`` (and placed on it, when a
    ``citybrain.schedule-plan/1`` ``placement`` is given). ``policies`` defaults to the
    graph's; only those active at ``at`` (default: now, local wall clock) count."""
    graph._need(N.CAMERA, camera)
    graph._need(N.ALGORITHM, algorithm)
    at = at or datetime.now()
    pols = list(graph.policies.values()) if policies is None else policies
    active = [p for p in pols if p.active_at(at)]
    info = graph.node(N.ALGORITHM, algorithm)
    zone = graph.zone_of(camera)
    cam_scenes = graph.camera_scenes(camera)
    alg_scenes = graph.algorithm_scenes(algorithm)
    detects = graph.algorithm_detects(algorithm)
    out = Explanation(
        camera=camera,
        algorithm=algorithm,
        version=info["version"],
        reason=Reason.APPLICABLE,
        applicable=False,
        sentence="",
        camera_zone=zone,
        camera_scenes=cam_scenes,
        algorithm_scenes=alg_scenes,
        algorithm_detects=detects,
    )
    zone_policies = [p for p in active if zone is not None and p.matches_zone(zone)]
    zone_events = list(dict.fromkeys(e for p in zone_policies for e in p.events))
    out.zone_events = zone_events
    out.policy_events = [e for e in detects if e in set(zone_events)]
    out.policies = [p.id for p in zone_policies if set(p.events) & set(detects)]
    out.pinned_by = [
        p.id for p in active if any(x.camera == camera and x.algorithm == algorithm for x in p.pins)
    ]
    match = graph.applicable_to(camera, algorithm)
    if match is not None:
        out.justifications = [j.to_dict() for j in match.justifications]
    pinned = bool(out.pinned_by)

    def done(reason: Reason, sentence: str) -> Explanation:
        out.reason = reason
        out.sentence = sentence
        return out

    if match is None and not pinned:
        return done(
            Reason.NO_SCENE_MATCH,
            f"{algorithm} is not applicable to {camera}: the camera sees "
            f"{_names(cam_scenes)} and {algorithm} applies to {_names(alg_scenes)}, "
            "no scene in common.",
        )
    if not out.policy_events and not pinned:
        asked = _names(zone_events)
        return done(
            Reason.NO_POLICY_EVENT,
            f"{algorithm} detects {_names(detects)}, but no active policy for zone "
            f"{zone} asks for any of these (policies there ask for: {asked}).",
        )
    cam_excl = [
        p.id
        for p in active
        if any(x.algorithm == algorithm and x.camera == camera for x in p.exclusions)
    ]
    if cam_excl:
        out.excluded_by = cam_excl
        return done(
            Reason.EXCLUDED,
            f"policy {_names(cam_excl)} excludes {algorithm} on camera {camera}.",
        )
    devices = {d: graph.device_target(d) for d in graph.camera_devices(camera)}
    out.devices = devices
    cost = graph.algorithm_cost(algorithm)
    out.cost_targets = list(cost)
    if not devices:
        return done(Reason.NO_DEVICE, f"no device reaches camera {camera}.")
    costed = [d for d, t in devices.items() if t in cost]
    if not costed:
        targets = _names(sorted({t for t in devices.values() if t}))
        return done(
            Reason.NO_COST_PROFILE,
            f"{algorithm} has no cost profile for the target of any device reaching "
            f"{camera} (devices' targets: {targets}; {algorithm} has costs for "
            f"{_names(list(cost))}).",
        )
    dev_excl: dict[str, list[str]] = {}
    for p in active:
        for x in p.exclusions:
            if x.algorithm == algorithm and x.device is not None and x.camera in (None, camera):
                dev_excl.setdefault(x.device, []).append(p.id)
    usable = [d for d in costed if d not in dev_excl]
    out.usable_devices = usable
    if not usable:
        ids = sorted({i for d in costed for i in dev_excl.get(d, [])})
        out.excluded_by = ids
        return done(
            Reason.EXCLUDED,
            f"policy {_names(ids)} excludes {algorithm} on every device that reaches "
            f"{camera} and can run it ({_names(costed)}).",
        )
    out.applicable = True
    why = (
        f"pinned by policy {_names(out.pinned_by)}"
        if pinned
        else f"policy {_names(out.policies)} asks for {_names(out.policy_events)} in zone {zone}"
    )
    if placement is None:
        path = ""
        if match is not None:
            j = match.justifications[0]
            path = f" ({j.sentence()})"
        return done(
            Reason.APPLICABLE,
            f"{algorithm} is applicable to {camera}{path}; {why}; it can run on {_names(usable)}.",
        )
    try:
        plan = _Plan.model_validate(dict(placement))
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise GraphError(f"placement: {loc}: {err['msg']}", field=loc) from None
    out.placed = False
    for row in plan.assignments:
        if row.camera == camera and row.algorithm == algorithm:
            out.placed = True
            out.device = row.device
            if row.device in dev_excl:
                out.excluded_by = dev_excl[row.device]
                out.applicable = False
                return done(
                    Reason.EXCLUDED,
                    f"the placement runs {algorithm} on {camera} on device {row.device}, "
                    f"which policy {_names(dev_excl[row.device])} excludes (the solver was "
                    "not given the exclusion).",
                )
            return done(
                Reason.PLACED,
                f"{algorithm} runs on {camera} on device {row.device}; {why}.",
            )
    wanted = set(out.policy_events)
    unserved = [r for r in plan.unserved if r.camera == camera and r.event in wanted]
    if unserved:
        out.unserved = [r.model_dump(exclude_none=True) for r in unserved]
        reasons = "; ".join(f"{r.event}: {r.reason or 'no reason given'}" for r in unserved)
        capacity = any((r.reason or "").lower().startswith("capacity") for r in unserved)
        return done(
            Reason.CAPACITY if capacity else Reason.UNSERVED,
            f"{algorithm} is applicable to {camera} but the placement leaves its demands "
            f"unserved ({reasons}).",
        )
    served = {r.event for r in plan.served if r.camera == camera}
    if wanted and wanted <= served:
        others = [
            r.algorithm
            for r in plan.assignments
            if r.camera == camera
            and r.algorithm
            and graph.has(N.ALGORITHM, r.algorithm)
            and set(graph.algorithm_detects(r.algorithm)) & wanted
        ]
        out.served_by = list(dict.fromkeys(others))
        return done(
            Reason.SERVED_BY_OTHER,
            f"{algorithm} is applicable to {camera} but the placement serves "
            f"{_names(sorted(wanted))} there with {_names(out.served_by)}.",
        )
    return done(
        Reason.NOT_PLACED,
        f"{algorithm} is applicable to {camera} but the placement does not run it there "
        "and gives no reason.",
    )

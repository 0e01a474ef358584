"""The plan checker: verifies every constraint of a plan against its instance.

It deliberately does not reuse the solvers' compiled problem (only the demand
expansion, which defines what is asked for), so a solver bug cannot hide itself.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel

from ._extensions import PIN_EVENT_PREFIX, Extensions, parse_extensions
from ._models import Instance, Plan
from ._problem import expand_demands

_TOL = 1e-6


class ViolationCode(str, Enum):
    UNKNOWN_CAMERA = "unknown_camera"
    UNKNOWN_ALGORITHM = "unknown_algorithm"
    UNKNOWN_DEVICE = "unknown_device"
    VERSION_MISMATCH = "version_mismatch"
    DUPLICATE_ASSIGNMENT = "duplicate_assignment"
    UNREACHABLE = "unreachable"
    NO_COST_PROFILE = "no_cost_profile"
    SCENE_MISMATCH = "scene_mismatch"
    SERVES_NOTHING = "serves_nothing"
    MULTIPLE_DECODERS = "multiple_decoders"
    COMPUTE_EXCEEDED = "compute_exceeded"
    MEMORY_EXCEEDED = "memory_exceeded"
    STREAMS_EXCEEDED = "streams_exceeded"
    UNKNOWN_DEMAND = "unknown_demand"
    SERVED_NOT_COVERED = "served_not_covered"
    UNSERVED_BUT_COVERED = "unserved_but_covered"
    DEMAND_MISSING = "demand_missing"
    DEMAND_REPEATED = "demand_repeated"
    OBJECTIVE_MISMATCH = "objective_mismatch"
    EXCLUDED = "excluded"
    PIN_MISSING = "pin_missing"
    PIN_PLACED_BUT_UNSERVED = "pin_placed_but_unserved"


class Violation(BaseModel):
    code: ViolationCode
    message: str

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


def check_plan(
    inst: Instance, plan: Plan, extensions: Extensions | dict | None = None
) -> list[Violation]:
    """Every violated constraint of ``plan`` for ``inst`` (empty when the plan is valid).

    With ``extensions`` (pins and exclusions, :mod:`scheduler._extensions`): no
    assignment may be excluded; every pin is placed or listed ``unserved`` as
    ``pin:<algorithm>``; a pinned assignment needs no scene match nor demand."""
    out: list[Violation] = []
    ext = parse_extensions(extensions)
    pins = {(p.camera, p.algorithm) for p in ext.pins}

    def v(code: ViolationCode, msg: str) -> None:
        out.append(Violation(code=code, message=msg))

    cams = {c.id: c for c in inst.cameras}
    algs = {a.id: a for a in inst.algorithms}
    devs = {d.id: d for d in inst.devices}
    reach = {d.id: set(d.cameras) for d in inst.devices}
    demands = expand_demands(inst)
    demanded_events: dict[str, set[str]] = {}
    for cid, e in demands:
        demanded_events.setdefault(cid, set()).add(e)

    used_ms: dict[str, float] = {}
    models: dict[str, dict[str, float]] = {}
    streams: dict[str, set[str]] = {}
    decoders: dict[str, set[str]] = {}
    covered: set[tuple[str, str]] = set()
    seen: set[tuple[str, str, str]] = set()

    for i, asg in enumerate(plan.assignments):
        where = f"assignments[{i}] ({asg.camera}, {asg.algorithm}, {asg.device})"
        cam = cams.get(asg.camera)
        alg = algs.get(asg.algorithm)
        dev = devs.get(asg.device)
        if cam is None:
            v(ViolationCode.UNKNOWN_CAMERA, f"{where}: unknown camera {asg.camera!r}")
        if alg is None:
            v(ViolationCode.UNKNOWN_ALGORITHM, f"{where}: unknown algorithm {asg.algorithm!r}")
        if dev is None:
            v(ViolationCode.UNKNOWN_DEVICE, f"{where}: unknown device {asg.device!r}")
        if cam is None or alg is None or dev is None:
            continue
        if asg.version != alg.version:
            v(
                ViolationCode.VERSION_MISMATCH,
                f"{where}: version {asg.version!r}, the instance has {alg.version!r}",
            )
        k3 = (asg.camera, asg.algorithm, asg.device)
        if k3 in seen:
            v(ViolationCode.DUPLICATE_ASSIGNMENT, f"{where}: listed twice")
            continue
        seen.add(k3)
        if asg.camera not in reach[asg.device]:
            v(ViolationCode.UNREACHABLE, f"{where}: device does not reach the camera")
        prof = alg.cost.get(dev.target)
        if prof is None:
            v(ViolationCode.NO_COST_PROFILE, f"{where}: no cost profile for target {dev.target!r}")
        excl = ext.excluded(asg.camera, asg.algorithm, asg.device) if ext.exclusions else None
        if excl is not None:
            v(ViolationCode.EXCLUDED, f"{where}: excluded by {excl}")
        pinned = (asg.camera, asg.algorithm) in pins
        if not set(alg.scenes) & set(cam.scenes):
            if not pinned:
                v(
                    ViolationCode.SCENE_MISMATCH,
                    f"{where}: no scene of the algorithm is the camera's",
                )
            serves: set[str] = set()
        else:
            serves = set(alg.detects) & demanded_events.get(asg.camera, set())
            if not serves and not pinned:
                v(ViolationCode.SERVES_NOTHING, f"{where}: detects no event demanded of the camera")
        decoders.setdefault(asg.camera, set()).add(asg.device)
        streams.setdefault(asg.device, set()).add(asg.camera)
        if prof is not None:
            used_ms[asg.device] = used_ms.get(asg.device, 0.0) + alg.fps * prof.ms_per_frame
            models.setdefault(asg.device, {})[asg.algorithm] = prof.mem_mb
        for e in serves:
            covered.add((asg.camera, e))

    for cid, ds in decoders.items():
        if len(ds) > 1:
            v(ViolationCode.MULTIPLE_DECODERS, f"camera {cid} is decoded on {sorted(ds)}")
    for did, dev in devs.items():
        cap = dev.capacity
        ms = used_ms.get(did, 0.0)
        if ms > cap.ms_per_s * (1 + _TOL) + _TOL:
            v(ViolationCode.COMPUTE_EXCEEDED, f"device {did}: {ms:g} ms/s > {cap.ms_per_s:g}")
        mem = sum(models.get(did, {}).values())
        if mem > cap.mem_mb * (1 + _TOL) + _TOL:
            v(ViolationCode.MEMORY_EXCEEDED, f"device {did}: {mem:g} MB of models > {cap.mem_mb:g}")
        ns = len(streams.get(did, ()))
        if ns > cap.streams:
            v(ViolationCode.STREAMS_EXCEEDED, f"device {did}: {ns} streams > {cap.streams}")

    listed: dict[tuple[str, str], str] = {}
    for i, ref in enumerate(plan.served):
        key = (ref.camera, ref.event)
        where = f"served[{i}] ({ref.camera}, {ref.event})"
        if key not in demands:
            v(ViolationCode.UNKNOWN_DEMAND, f"{where}: no policy asks for it")
            continue
        if key in listed:
            v(ViolationCode.DEMAND_REPEATED, f"{where}: already listed in {listed[key]}")
            continue
        listed[key] = "served"
        if key not in covered:
            v(ViolationCode.SERVED_NOT_COVERED, f"{where}: no assignment serves it")
    placed_pairs = {(a.camera, a.algorithm) for a in plan.assignments}
    listed_pins: set[tuple[str, str]] = set()
    for i, un in enumerate(plan.unserved):
        key = (un.camera, un.event)
        where = f"unserved[{i}] ({un.camera}, {un.event})"
        pin_key = (un.camera, un.event[len(PIN_EVENT_PREFIX) :])
        if un.event.startswith(PIN_EVENT_PREFIX) and pin_key in pins:
            if pin_key in listed_pins:
                v(ViolationCode.DEMAND_REPEATED, f"{where}: pin listed twice")
            listed_pins.add(pin_key)
            if pin_key in placed_pairs:
                v(ViolationCode.PIN_PLACED_BUT_UNSERVED, f"{where}: the pin is placed")
            continue
        if key not in demands:
            v(ViolationCode.UNKNOWN_DEMAND, f"{where}: no policy asks for it")
            continue
        if key in listed:
            v(ViolationCode.DEMAND_REPEATED, f"{where}: already listed in {listed[key]}")
            continue
        listed[key] = "unserved"
        if key in covered:
            v(ViolationCode.UNSERVED_BUT_COVERED, f"{where}: an assignment serves it")
    for cam_id, alg_id in sorted(pins - placed_pairs - listed_pins):
        v(
            ViolationCode.PIN_MISSING,
            f"pin of {alg_id} on {cam_id} is neither placed nor listed unserved",
        )
    missing = [k for k in demands if k not in listed]
    if missing:
        c, e = missing[0]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        v(ViolationCode.DEMAND_MISSING, f"demand ({c}, {e}){more} neither served nor unserved")
    true_objective = sum(demands[k] for k in covered if k in demands)
    if abs(plan.objective - true_objective) > _TOL * max(1.0, abs(true_objective)):
        v(
            ViolationCode.OBJECTIVE_MISMATCH,
            f"objective {plan.objective:g}, the served priorities sum to {true_objective:g}",
        )
    return out

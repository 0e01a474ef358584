"""The checker catches every kind of violation on corrupted plans."""

from __future__ import annotations

import pytest

import scheduler as sch
from scheduler import ViolationCode as V
from tests.conftest import REPO

EXAMPLE = REPO.parent / "shared" / "schemas" / "schedule-instance.example.json"


def inst_and_plan() -> tuple[sch.Instance, dict]:
    inst = sch.load_instance(EXAMPLE)
    plan = sch.solve(inst, solver="milp")
    assert sch.check_plan(inst, plan) == []
    return inst, plan.model_dump(by_alias=True)


def asg(camera: str, algorithm: str, device: str, version: str | None = None) -> dict:
    versions = {"manhole_missing": "1.2.0", "drowning": "0.9.1", "lobby_cargo": "2.0.0"}
    return {
        "camera": camera,
        "algorithm": algorithm,
        "version": version or versions.get(algorithm, "1"),
        "device": device,
    }


def codes(inst: sch.Instance, plan: dict) -> set[V]:
    return {v.code for v in sch.check_plan(inst, sch.parse_plan(plan))}


def _tight(inst: sch.Instance, **cap) -> sch.Instance:
    d = inst.model_dump(by_alias=True)
    d["devices"][0]["capacity"].update(cap)
    return sch.parse_instance(d)


def test_valid_plan_has_no_violation() -> None:
    inst, plan = inst_and_plan()
    assert codes(inst, plan) == set()


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (lambda p: p["assignments"].append(asg("cam-x", "drowning", "edge-01")), V.UNKNOWN_CAMERA),
        (lambda p: p["assignments"].append(asg("cam-002", "nope", "edge-01")), V.UNKNOWN_ALGORITHM),
        (lambda p: p["assignments"].append(asg("cam-002", "drowning", "edge-9")), V.UNKNOWN_DEVICE),
        (lambda p: p["assignments"][0].update(version="9.9.9"), V.VERSION_MISMATCH),
        (lambda p: p["assignments"].append(dict(p["assignments"][0])), V.DUPLICATE_ASSIGNMENT),
        # edge-02 does not reach cam-002
        (lambda p: p["assignments"].append(asg("cam-002", "lobby_cargo", "edge-02")), V.UNREACHABLE),
        # drowning has no cpu-x86 profile
        (lambda p: p["assignments"].append(asg("cam-001", "drowning", "edge-02")), V.NO_COST_PROFILE),
        # drowning's scenes are not cam-001's (street)
        (lambda p: p["assignments"].append(asg("cam-001", "drowning", "edge-01")), V.SCENE_MISMATCH),
        # lobby_cargo on a street camera: wrong scene, serves nothing demanded
        (lambda p: p["assignments"].append(asg("cam-001", "lobby_cargo", "edge-01")), V.SCENE_MISMATCH),
        # cam-001 decoded on both devices
        (lambda p: p["assignments"].append(asg("cam-001", "manhole_missing", "edge-02")),
         V.MULTIPLE_DECODERS),
        (lambda p: p["served"].append({"camera": "cam-003", "event": "person_in_water"}),
         V.UNKNOWN_DEMAND),
        (lambda p: p["served"].append(p["served"][0]), V.DEMAND_REPEATED),
        (lambda p: p["unserved"].append({**p["served"][0], "reason": "x"}), V.DEMAND_REPEATED),
        (lambda p: p["served"].append({"camera": "cam-001", "event": "person_in_water"}) or
         p["unserved"].pop(0), V.SERVED_NOT_COVERED),
        (lambda p: p["unserved"].append({**p["served"].pop(0), "reason": "capacity"}),
         V.UNSERVED_BUT_COVERED),
        (lambda p: p["unserved"].pop(), V.DEMAND_MISSING),
        (lambda p: p.update(objective=p["objective"] + 1), V.OBJECTIVE_MISMATCH),
    ],
)  # fmt: skip
def test_corruptions_are_caught(corrupt, expected: V) -> None:
    inst, plan = inst_and_plan()
    corrupt(plan)
    assert expected in codes(inst, plan)


def test_serves_nothing() -> None:
    d = sch.load_instance(EXAMPLE).model_dump(by_alias=True)
    # an applicable algorithm whose events nobody asked for at cam-001
    d["algorithms"].append(
        {"id": "potholes", "version": "1", "detects": ["pothole"], "scenes": ["street"], "fps": 1,
         "cost": {"gpu-sm87": {"ms_per_frame": 1, "mem_mb": 1}}}
    )  # fmt: skip
    inst = sch.parse_instance(d)
    plan = sch.solve(inst, solver="milp").model_dump(by_alias=True)
    plan["assignments"].append(asg("cam-001", "potholes", "edge-01", "1"))
    assert V.SERVES_NOTHING in codes(inst, plan)


def test_capacity_violations() -> None:
    inst, plan = inst_and_plan()
    # edge-01 runs manhole (2 fps x 6 ms) + drowning (5 fps x 9 ms) = 57 ms/s, 1020 MB, 2 streams
    assert codes(_tight(inst, ms_per_s=56.0), plan) == {V.COMPUTE_EXCEEDED}
    assert codes(_tight(inst, mem_mb=1019.0), plan) == {V.MEMORY_EXCEEDED}
    assert codes(_tight(inst, streams=1), plan) == {V.STREAMS_EXCEEDED}
    assert codes(_tight(inst, ms_per_s=57.0, mem_mb=1020.0, streams=2), plan) == set()


def test_memory_counted_once_per_model_by_the_checker() -> None:
    d = sch.load_instance(EXAMPLE).model_dump(by_alias=True)
    d["cameras"].append({"id": "cam-009", "zone": "longhua/street-13", "scenes": ["street"]})
    d["devices"][0]["cameras"].append("cam-009")
    d["devices"][0]["capacity"]["mem_mb"] = 1020.0  # manhole 420 + drowning 600, once each
    inst = sch.parse_instance(d)
    plan = sch.solve(inst, solver="milp")
    assert ("cam-009", "manhole_missing", "edge-01") in {
        (a.camera, a.algorithm, a.device) for a in plan.assignments
    }
    assert sch.check_plan(inst, plan) == []


def test_solve_never_returns_a_plan_the_checker_rejects(monkeypatch: pytest.MonkeyPatch) -> None:
    import scheduler._solve as solve_mod

    real = solve_mod.to_plan

    def broken(*a, **kw):
        plan = real(*a, **kw)
        return plan.model_copy(update={"objective": plan.objective + 1})

    monkeypatch.setattr(solve_mod, "to_plan", broken)
    with pytest.raises(sch.PlanCheckFailed) as ei:
        sch.solve(sch.load_instance(EXAMPLE), solver="heuristic")
    assert ei.value.violations[0].code is V.OBJECTIVE_MISMATCH

"""Solvers on the example instance and on hand-made instances with a known optimum."""

from __future__ import annotations

import pytest

import scheduler as sch
from tests.conftest import REPO

EXAMPLE = REPO.parent / "shared" / "schemas" / "schedule-instance.example.json"
SOLVERS = ["auto", "milp", "heuristic", "baseline"]


def A(id, detects, *, scenes=("s",), fps=1.0, cost=None, version="1.0.0"):  # noqa: N802
    cost = {"t": (100.0, 100.0)} if cost is None else cost
    return {
        "id": id,
        "version": version,
        "detects": list(detects),
        "scenes": list(scenes),
        "fps": fps,
        "cost": {k: {"ms_per_frame": v[0], "mem_mb": v[1]} for k, v in cost.items()},
    }


def C(id, zone="z/a", scenes=("s",)):  # noqa: N802
    return {"id": id, "zone": zone, "scenes": list(scenes)}


def D(id, cams, *, ms=1000.0, mem=1000.0, streams=8, target="t"):  # noqa: N802
    return {
        "id": id,
        "target": target,
        "capacity": {"ms_per_s": ms, "mem_mb": mem, "streams": streams},
        "cameras": list(cams),
    }


def P(events, priority=1.0, zone="z/*"):  # noqa: N802
    return {"zone": zone, "events": list(events), "priority": priority}


def make(algs, cams, devs, pols) -> sch.Instance:
    return sch.parse_instance(
        {
            "schema": sch.INSTANCE_SCHEMA,
            "algorithms": algs,
            "cameras": cams,
            "devices": devs,
            "policies": pols,
        }
    )


def solved(inst: sch.Instance, solver: str, **kw) -> sch.Plan:
    kw.setdefault("time_limit", 10)
    plan = sch.solve(inst, solver=solver, **kw)
    assert sch.check_plan(inst, plan) == []
    return plan


def placed(plan: sch.Plan) -> set[tuple[str, str, str]]:
    return {(a.camera, a.algorithm, a.device) for a in plan.assignments}


@pytest.mark.parametrize("solver", SOLVERS)
def test_example_instance(solver: str) -> None:
    inst = sch.load_instance(EXAMPLE)
    plan = solved(inst, solver)
    assert plan.objective == 7  # manhole (3) + drowning (3) + cargo (1)
    served = {(s.camera, s.event) for s in plan.served}
    assert served == {
        ("cam-001", "manhole_cover_missing"),
        ("cam-002", "person_in_water"),
        ("cam-003", "cargo_carried"),
    }
    assert {(u.camera, u.event) for u in plan.unserved} == {
        ("cam-001", "person_in_water"),
        ("cam-002", "manhole_cover_missing"),
    }
    assert all(u.reason.startswith("no scene match") for u in plan.unserved)
    assert plan.solver.bound == 7
    assert plan.solver.optimal
    assert all(a.version for a in plan.assignments)
    if solver != "baseline":
        # ties: cam-001's manhole detector is cheaper on the GPU that also decodes cam-002
        assert ("cam-001", "manhole_missing", "edge-01") in placed(plan)


@pytest.mark.parametrize("solver", SOLVERS)
def test_memory_is_counted_once_per_model(solver: str) -> None:
    # 600 MB model, 1000 MB device: both cameras share the one loaded copy
    inst = make(
        [A("a", ["e"], cost={"t": (10.0, 600.0)})],
        [C("c1"), C("c2")],
        [D("d", ["c1", "c2"], mem=1000)],
        [P(["e"])],
    )
    plan = solved(inst, solver)
    assert plan.objective == 2
    assert placed(plan) == {("c1", "a", "d"), ("c2", "a", "d")}


@pytest.mark.parametrize("solver", SOLVERS)
def test_decode_slot_limit(solver: str) -> None:
    inst = make(
        [A("a", ["e1", "e2"])],
        [C("c1", zone="z/one"), C("c2", zone="z/two"), C("c3", zone="z/three")],
        [D("d", ["c1", "c2", "c3"], streams=2)],
        [P(["e1"], 1, "z/one"), P(["e1", "e2"], 3, "z/two"), P(["e2"], 2, "z/three")],
    )
    plan = solved(inst, solver)
    assert plan.objective == 6 + 2
    assert {a.camera for a in plan.assignments} == {"c2", "c3"}
    (un,) = plan.unserved
    assert (un.camera, un.event) == ("c1", "e1")
    assert un.reason.startswith("capacity")


@pytest.mark.parametrize("solver", SOLVERS)
def test_one_decoding_device_per_camera(solver: str) -> None:
    # e1's detector runs only on the cpu, e2's only on the gpu: one camera, one decoder
    inst = make(
        [A("a1", ["e1"], cost={"cpu": (10, 10)}), A("a2", ["e2"], cost={"gpu": (10, 10)})],
        [C("c")],
        [D("cpu-box", ["c"], target="cpu"), D("gpu-box", ["c"], target="gpu")],
        [P(["e1"], 2), P(["e2"], 5)],
    )
    plan = solved(inst, solver)
    assert plan.objective == 5
    assert placed(plan) == {("c", "a2", "gpu-box")}


@pytest.mark.parametrize("solver", ["auto", "milp"])
def test_priority_trade_off(solver: str) -> None:
    # compute for 10 frames/s of 100 ms = 1000 ms/s: either the big demand (5) alone
    # or two smaller ones (2 + 2); also a cheap 3-pointer that only fits beside the big one
    inst = make(
        [
            A("big", ["e_big"], fps=8.0),
            A("small", ["e_small"], fps=5.0),
            A("cheap", ["e_cheap"], fps=2.0),
        ],
        [C("c1", zone="z/1"), C("c2", zone="z/2"), C("c3", zone="z/3"), C("c4", zone="z/4")],
        [D("d", ["c1", "c2", "c3", "c4"], ms=1000.0)],
        [
            P(["e_big"], 5, "z/1"),
            P(["e_small"], 2, "z/2"),
            P(["e_small"], 2, "z/3"),
            P(["e_cheap"], 3, "z/4"),
        ],
    )
    plan = solved(inst, solver)
    # big (800 ms) + cheap (200 ms) = 8 beats small + small (1000 ms) = 4 and small + cheap = 5
    assert plan.objective == 8
    assert plan.solver.optimal
    assert plan.solver.bound == 8


@pytest.mark.parametrize("solver", ["auto", "milp", "heuristic"])
def test_fewer_models_break_ties(solver: str) -> None:
    # one algorithm detects both events: same objective with one model instead of two
    inst = make(
        [A("x", ["e1"]), A("y", ["e2"]), A("xy", ["e1", "e2"])],
        [C("c")],
        [D("d", ["c"])],
        [P(["e1", "e2"], 1)],
    )
    plan = solved(inst, solver)
    assert plan.objective == 2
    assert placed(plan) == {("c", "xy", "d")}


def test_hostile_but_valid_inputs_become_reasons() -> None:
    inst = make(
        [
            A("nocost", ["e1"], cost={}),
            A("a", ["e2"], scenes=["beach"]),
            A("huge", ["e3"], fps=100),
        ],
        [C("c"), C("lonely", zone="z/far")],
        [D("d", ["c"])],
        [P(["e1", "e2", "e3", "e4"], 1)],
    )
    for solver in SOLVERS:
        plan = solved(inst, solver)
        assert plan.objective == 0
        assert plan.assignments == []
        reasons = {(u.camera, u.event): u.reason for u in plan.unserved}
        assert reasons[("c", "e1")] == "no cost profile for any reachable device target"
        assert reasons[("c", "e2")].startswith("no scene match")
        assert reasons[("c", "e3")].startswith("capacity: no reachable device can hold")
        assert reasons[("c", "e4")] == "no algorithm detects e4"
        assert reasons[("lonely", "e4")] == "no algorithm detects e4"
        assert reasons[("lonely", "e1")] == "no reachable device: no device reaches lonely"
        assert plan.solver.optimal and plan.solver.bound == 0


def test_empty_instance() -> None:
    inst = make([], [], [], [])
    plan = solved(inst, "auto")
    assert plan.objective == 0 and plan.served == [] and plan.unserved == []


def test_generated_small_instances_all_solvers_agree_with_the_checker() -> None:
    for seed in (1, 3):
        inst = sch.generate_instance(30, 10, 5, seed=seed)
        plans = {s: solved(inst, s) for s in SOLVERS}
        best = plans["milp"]
        assert best.solver.optimal
        assert best.solver.bound is not None
        for s, p in plans.items():
            assert p.objective <= best.solver.bound + 1e-6, s
        assert plans["auto"].objective >= best.objective - 1e-6


def test_churn_only_the_failed_devices_assignments_move() -> None:
    inst = sch.generate_instance(40, 12, 6, seed=7)
    for solver in ("milp", "heuristic"):
        before = solved(inst, solver)
        assert before.assignments
        victim = max(
            {a.device for a in before.assignments},
            key=lambda d: sum(a.device == d for a in before.assignments),
        )
        data = inst.model_dump(by_alias=True)
        data["devices"] = [d for d in data["devices"] if d["id"] != victim]
        after_inst = sch.parse_instance(data)
        after = solved(after_inst, solver, previous=before, churn_weight=1000.0)
        old = placed(before)
        must_move = {t for t in old if t[2] == victim}
        kept = old & placed(after)
        assert kept == old - must_move, solver
        moved, _added = sch.churn(before, after)
        assert moved == len(must_move)


def test_churn_weight_keeps_an_equal_plan_and_zero_weight_is_free() -> None:
    # two interchangeable devices: the previous plan's choice stays
    inst = make([A("a", ["e"])], [C("c")], [D("d1", ["c"]), D("d2", ["c"])], [P(["e"], 1)])
    prev = sch.parse_plan(
        {
            "schema": sch.PLAN_SCHEMA,
            "assignments": [{"camera": "c", "algorithm": "a", "version": "1.0.0", "device": "d2"}],
            "served": [{"camera": "c", "event": "e"}],
            "unserved": [],
            "objective": 1,
            "solver": {"name": "x", "seconds": 0, "optimal": True, "bound": 1},
        }
    )
    for solver in ("milp", "heuristic", "auto"):
        plan = solved(inst, solver, previous=prev, churn_weight=0.5)
        assert placed(plan) == {("c", "a", "d2")}


def test_solve_rejects_bad_parameters() -> None:
    inst = sch.load_instance(EXAMPLE)
    with pytest.raises(ValueError):
        sch.solve(inst, solver="magic")
    with pytest.raises(ValueError):
        sch.solve(inst, time_limit=0)
    with pytest.raises(ValueError):
        sch.solve(inst, churn_weight=-1)


def test_previous_plan_naming_vanished_things_is_tolerated() -> None:
    inst = make([A("a", ["e"])], [C("c")], [D("d1", ["c"]), D("d2", ["c"])], [P(["e"], 1)])
    prev = sch.parse_plan(
        {
            "schema": sch.PLAN_SCHEMA,
            "assignments": [
                {"camera": "c", "algorithm": "a", "version": "1.0.0", "device": "d2"},
                {"camera": "gone", "algorithm": "a", "version": "1.0.0", "device": "d9"},
                {"camera": "c", "algorithm": "retired", "version": "3", "device": "d2"},
            ],
            "served": [],
            "unserved": [],
            "objective": 0,
            "solver": {"name": "x", "seconds": 0, "optimal": False, "bound": None},
        }
    )
    for solver in SOLVERS:
        plan = solved(inst, solver, previous_plan=prev, churn_weight=0.5)
        assert plan.objective == 1
        if solver != "baseline":
            assert placed(plan) == {("c", "a", "d2")}
        moved, _ = sch.churn(prev, plan)
        assert moved >= 2  # the vanished camera's and the retired algorithm's
    with pytest.raises(ValueError):
        sch.solve(inst, previous=prev, previous_plan=prev.model_copy())


def test_heuristic_past_its_deadline_still_returns_a_checked_plan() -> None:
    inst = sch.generate_instance(60, 20, 10, seed=11)
    hurried = solved(inst, "heuristic", time_limit=1e-6)
    assert hurried.objective > 0
    assert hurried.objective <= solved(inst, "milp").solver.bound

"""The Lagrangian upper bound (scheduler._milp.lagrangian_bound) and the ``milp``
solver's reported bound and gap: never below a proven optimum (with and without pins
and exclusions), tighter than "every servable demand served" where capacity binds,
and HiGHS run in a child process that is stopped when it overruns its limit."""

from __future__ import annotations

import pytest

import scheduler as sch
from scheduler import _solve
from scheduler._extensions import parse_extensions
from scheduler._milp import lagrangian_bound, solve_milp, solve_milp_isolated
from scheduler._problem import compile_problem


def _inst(cameras: int, ms_per_s: float, priority: float = 1.0) -> sch.Instance:
    return sch.parse_instance(
        {
            "schema": sch.INSTANCE_SCHEMA,
            "algorithms": [
                {
                    "id": "det",
                    "version": "1",
                    "detects": ["fire"],
                    "scenes": ["street"],
                    "fps": 1,
                    "cost": {"cpu": {"ms_per_frame": 100, "mem_mb": 10}},
                },  # fmt: skip
            ],
            "cameras": [
                {"id": f"c{i}", "zone": "z/a", "scenes": ["street"]} for i in range(cameras)
            ],
            "devices": [
                {
                    "id": "d0",
                    "target": "cpu",
                    "capacity": {"ms_per_s": ms_per_s, "mem_mb": 1000, "streams": 50},
                    "cameras": [f"c{i}" for i in range(cameras)],
                },  # fmt: skip
            ],
            "policies": [{"zone": "z/*", "events": ["fire"], "priority": priority}],
        }
    )


def test_bound_meets_the_optimum_where_compute_binds() -> None:
    # room for 2 of 5 cameras: the trivial bound says 5, the optimum is 2
    prob = compile_problem(_inst(5, 250.0))
    assert prob.servable_value() == 5
    lb = lagrangian_bound(prob, target=2.0)
    assert lb.bound == 2
    plan = sch.solve(_inst(5, 250.0), solver="milp", time_limit=20)
    assert plan.objective == 2 and plan.solver.bound == 2 and plan.solver.optimal


def test_bound_is_never_below_a_proven_optimum_and_often_tighter() -> None:
    tighter = 0
    for seed in range(12):
        inst = sch.generate_instance(40 + seed, 12, 6, seed=seed)
        prob = compile_problem(inst)
        opt = sch.solve(inst, solver="milp", time_limit=30)
        assert opt.solver.optimal, seed
        lb = lagrangian_bound(prob, target=opt.objective)
        assert opt.objective <= lb.bound <= prob.servable_value(), seed
        tighter += lb.bound < prob.servable_value()
    assert tighter >= 6


def test_bound_holds_with_pins_and_exclusions() -> None:
    inst = sch.generate_instance(50, 12, 6, seed=3)
    first = sch.solve(inst, solver="milp", time_limit=30)
    a, b = first.assignments[0], first.assignments[1]
    ext = parse_extensions(
        {
            "citybrain.pins/1": [{"camera": a.camera, "algorithm": a.algorithm, "priority": 1}],
            "citybrain.exclusions/1": [{"algorithm": b.algorithm, "device": b.device}],
        }
    )
    opt = sch.solve(inst, solver="milp", time_limit=30, extensions=ext)
    assert opt.solver.optimal
    lb = lagrangian_bound(compile_problem(inst, ext), target=opt.objective)
    assert lb.bound >= opt.objective


def test_degenerate_problems() -> None:
    empty = sch.parse_instance({"schema": sch.INSTANCE_SCHEMA})
    assert lagrangian_bound(compile_problem(empty)).bound == 0
    # fractional priorities: no flooring, still an upper bound
    prob = compile_problem(_inst(3, 150.0, priority=0.7))
    lb = lagrangian_bound(prob, target=0.7)
    assert 0.7 - 1e-9 <= lb.bound <= 2.1 + 1e-9


def test_milp_reports_its_bound_and_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    inst = sch.generate_instance(300, 40, 30, seed=5)
    prob = compile_problem(inst)
    # take the isolated (child process) path at this size too
    monkeypatch.setattr(_solve, "ISOLATE_MILP_TRIPLES", 10)
    plan = sch.solve(inst, solver="milp", time_limit=8)
    assert not sch.check_plan(inst, plan)
    assert plan.solver.bound is not None
    assert plan.objective <= plan.solver.bound <= prob.servable_value()


def test_isolated_milp_matches_in_process_and_is_stopped_when_late() -> None:
    prob = compile_problem(_inst(5, 250.0))
    here = solve_milp(prob, 20.0)
    there = solve_milp_isolated(prob, 20.0)
    assert there.optimal and here.optimal
    assert len(there.triples or []) == len(here.triples or []) == 2
    # a limit no child process can meet (starting one takes longer): stopped, no result
    late = solve_milp_isolated(prob, 0.001, grace=0.0)
    assert late.triples is None and not late.optimal and late.bound is None
    assert "stopped" in late.message

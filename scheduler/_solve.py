"""``solve()``: pick a solver, re-plan against a previous plan, check, return a plan."""

from __future__ import annotations

import time
from enum import Enum

from ._check import check_plan
from ._errors import PlanCheckFailed
from ._extensions import Extensions, parse_extensions
from ._heuristic import baseline_solve, heuristic_solve
from ._models import Instance, Plan
from ._pins import place_pins
from ._problem import compile_problem
from ._state import State, to_plan

#: ``auto`` runs the exact MILP when the instance has at most this many triples
AUTO_MILP_MAX_TRIPLES = 30_000
#: above this many triples ``milp`` runs HiGHS in a child process it can stop
ISOLATE_MILP_TRIPLES = 30_000
#: share of a ``milp`` run's budget for its heuristic incumbent, and for the
#: Lagrangian bound (:func:`scheduler._milp.lagrangian_bound`)
MILP_HEURISTIC_SHARE = 0.15
MILP_LAGRANGIAN_SHARE = 0.1


class SolverName(str, Enum):
    AUTO = "auto"
    MILP = "milp"
    HEURISTIC = "heuristic"
    BASELINE = "baseline"


def _bound_ok(objective: float, bound: float | None) -> bool:
    return bound is not None and objective >= bound - 1e-6 * max(1.0, abs(bound))


def solve(
    instance: Instance,
    *,
    solver: SolverName | str = SolverName.AUTO,
    time_limit: float = 10.0,
    previous: Plan | None = None,
    churn_weight: float = 1.0,
    seed: int = 0,
    previous_plan: Plan | None = None,
    extensions: Extensions | dict | None = None,
) -> Plan:
    """A checked plan for ``instance``.

    ``time_limit`` bounds the search (the MILP's limit, the local search's budget).
    With ``previous``, every previous assignment that is not kept costs
    ``churn_weight`` (in priority points): assignments that can stay, stay.
    ``solver.optimal`` means proven optimal for that (churn-penalised) objective;
    ``solver.bound`` is an upper bound on the sum of served priorities.
    ``milp`` first takes a heuristic incumbent and a Lagrangian bound (a quarter of
    the budget at most), then gives HiGHS the rest (above ``ISOLATE_MILP_TRIPLES`` in a
    child process stopped at the limit); it returns the better plan and the smaller
    bound, so a gap is known even when HiGHS returns nothing.
    ``previous_plan`` is an alias of ``previous``. ``extensions`` are the knowledge
    graph's pins and exclusions (:mod:`scheduler._extensions`): pins are placed first,
    exclusions are never placed, and the checker verifies both.
    Raises :class:`PlanCheckFailed` (never returns) if the plan would violate anything.
    """
    t0 = time.perf_counter()
    if previous_plan is not None:
        if previous is not None and previous is not previous_plan:
            raise ValueError("give previous or previous_plan, not both")
        previous = previous_plan
    solver = SolverName(solver)
    if time_limit <= 0:
        raise ValueError("time_limit must be positive")
    if churn_weight < 0:
        raise ValueError("churn_weight must not be negative")
    ext = parse_extensions(extensions)
    prob = compile_problem(instance, ext)
    keep = prob.previous_triples(previous)
    place_pins(prob, keep)
    w = churn_weight if previous is not None else 0.0
    deadline = t0 + time_limit
    trivial_bound = prob.servable_value()

    name = solver.value
    optimal = False
    bound: float | None = trivial_bound
    state: State
    if solver is SolverName.BASELINE:
        state = baseline_solve(prob)
        if previous is not None:
            state = State.from_triples(prob, state.triples(), keep, w)
    elif solver is SolverName.HEURISTIC:
        state = heuristic_solve(
            prob, keep, w, deadline=t0 + 0.8 * time_limit, seed=seed, multistart=True
        )
    else:
        small = prob.n_triples <= AUTO_MILP_MAX_TRIPLES
        if solver is SolverName.MILP or small:
            from ._milp import lagrangian_bound, solve_milp, solve_milp_isolated

            heur: State | None = None
            if solver is SolverName.AUTO:
                # a quick heuristic first: an incumbent if the MILP runs out of time
                # (a quarter of the budget at most; small instances stop much earlier)
                heur = heuristic_solve(
                    prob, keep, w, deadline=time.perf_counter() + 0.25 * time_limit,
                    seed=seed, multistart=True,
                )  # fmt: skip
            else:
                # an incumbent, and a Lagrangian bound that holds whatever HiGHS manages
                # in its time (at city scale it may return nothing: the plan is then
                # the heuristic's, its gap measured against this bound)
                now = time.perf_counter()
                heur = heuristic_solve(
                    prob, keep, w, deadline=now + MILP_HEURISTIC_SHARE * time_limit, seed=seed
                )
                lag = lagrangian_bound(
                    prob,
                    target=heur.value,
                    deadline=time.perf_counter() + MILP_LAGRANGIAN_SHARE * time_limit,
                )
                bound = min(trivial_bound, lag.bound)
            left = max(0.1, deadline - time.perf_counter())
            if prob.n_triples > ISOLATE_MILP_TRIPLES:
                # HiGHS gets 85% of what is left; its process is stopped at 100%
                res = solve_milp_isolated(prob, 0.85 * left, keep, w, grace=0.15 * left)
            else:
                res = solve_milp(prob, left, keep, w)
            if res.bound is not None:
                bound = min(bound if bound is not None else trivial_bound, res.bound)
            cand = None
            if res.triples is not None:
                cand = State(prob, keep, w)
                for t in res.triples:
                    if cand.fits(t):
                        cand.add(t)
            if cand is None and heur is None:
                heur = heuristic_solve(prob, keep, w, deadline=deadline, seed=seed)
                name = "heuristic (milp found no solution)"
            if cand is not None and (heur is None or cand.key() >= heur.key()):
                state = cand
                name = "milp" if solver is SolverName.MILP else "auto/milp"
                optimal = res.optimal
            else:
                assert heur is not None
                state = heur
                name = name if name.startswith("heuristic") else f"{solver.value}/heuristic"
                optimal = res.optimal and _bound_ok(state.value, bound) and not keep
        else:
            # leave a fifth of the budget for writing and checking the plan
            lns_deadline = t0 + 0.8 * time_limit
            state = heuristic_solve(prob, keep, w, deadline=lns_deadline, seed=seed)
            name = "auto/heuristic"
    if not optimal and not keep and _bound_ok(state.value, bound):
        optimal = True  # the served priorities meet an upper bound
    plan = to_plan(state, name, time.perf_counter() - t0, optimal, bound)
    violations = check_plan(instance, plan, ext)
    if violations:
        raise PlanCheckFailed(
            f"solver {name} produced an invalid plan: {violations[0]}"
            + (f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""),
            violations,
        )
    return plan


def churn(previous: Plan, plan: Plan) -> tuple[int, int]:
    """(previous assignments not kept, new assignments) between two plans."""
    old = {(a.camera, a.algorithm, a.device) for a in previous.assignments}
    new = {(a.camera, a.algorithm, a.device) for a in plan.assignments}
    return len(old - new), len(new - old)

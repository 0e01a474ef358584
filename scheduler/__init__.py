"""Placement of algorithms on edge devices (../shared/schemas/README.md).

Reads a ``citybrain.schedule-instance/1`` (cameras, algorithms with cost
profiles, devices with capacities and reach, zone policies) and produces a
``citybrain.schedule-plan/1``: which algorithm runs on which camera's stream on
which device, which (camera, event) demands are served, and why the others are not.

- :func:`solve` — ``auto`` (exact MILP on small instances, proven optimal within
  the time limit, compared with the heuristic; heuristic with local search at city
  scale), ``milp``, ``heuristic`` or ``baseline``; re-planning against a previous
  plan with a churn penalty; every plan passes :func:`check_plan` before it is
  returned.
- :func:`check_plan` — every constraint, independently of the solvers.
- :func:`generate_instance` — seeded small or city-scale instances.
- Pins and exclusions (:class:`Extensions`, from the knowledge graph's policies) are
  an optional argument of :func:`solve` and :func:`check_plan`, not part of the
  instance file (:mod:`scheduler._extensions`).
- Re-planning: :func:`plan_to_desired` / :func:`build_desired` (plan -> per-device
  desired states with monotonic revisions), :class:`Debouncer` (coalescing,
  hysteresis, per-device rate limit), :class:`ReplanService` (MQTT + catalog DB ->
  retained ``dev/{d}/desired``; ``citybrain schedule run``).
- Zone globs: see :mod:`scheduler._zones` (``*`` stays within one path segment,
  ``**`` spans segments, a glob covers the sub-zones of what it matches).

Errors::

    SchedulerError
    ├── InvalidInstance   instance file/model malformed or inconsistent
    ├── InvalidPlan       plan file/model malformed
    └── PlanCheckFailed   a solver produced a plan the checker rejects (never returned)
"""

from __future__ import annotations

from ._check import Violation, ViolationCode, check_plan
from ._desired import DesiredBuild, build_desired, plan_to_desired
from ._errors import InvalidInstance, InvalidPlan, PlanCheckFailed, SchedulerError
from ._extensions import Extensions, load_extensions, parse_extensions
from ._generate import generate_instance
from ._models import (
    INSTANCE_SCHEMA,
    PLAN_SCHEMA,
    Algorithm,
    Assignment,
    Camera,
    Capacity,
    CostProfile,
    DemandRef,
    Device,
    Instance,
    Plan,
    Policy,
    SolverInfo,
    UnservedDemand,
    load_instance,
    load_plan,
    parse_instance,
    parse_plan,
)
from ._problem import expand_demands
from ._replan import Batch, Debouncer, PlannerState, load_state, next_window_edge, save_state
from ._service import ReplanRecord, ReplanService
from ._solve import SolverName, churn, solve
from ._zones import zone_matches

__all__ = [
    "INSTANCE_SCHEMA",
    "PLAN_SCHEMA",
    "Algorithm",
    "Assignment",
    "Batch",
    "Camera",
    "Capacity",
    "CostProfile",
    "Debouncer",
    "DemandRef",
    "DesiredBuild",
    "Device",
    "Extensions",
    "Instance",
    "InvalidInstance",
    "InvalidPlan",
    "Plan",
    "PlanCheckFailed",
    "PlannerState",
    "Policy",
    "ReplanRecord",
    "ReplanService",
    "SchedulerError",
    "SolverInfo",
    "SolverName",
    "UnservedDemand",
    "Violation",
    "ViolationCode",
    "build_desired",
    "check_plan",
    "churn",
    "expand_demands",
    "generate_instance",
    "load_extensions",
    "load_instance",
    "load_plan",
    "load_state",
    "next_window_edge",
    "parse_extensions",
    "parse_instance",
    "parse_plan",
    "plan_to_desired",
    "save_state",
    "solve",
    "zone_matches",
]

"""Pins and exclusions reach every solver, and the checker verifies both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import scheduler as sch

SOLVERS = ["auto", "milp", "heuristic", "baseline"]


def _alg(id: str, detects: list[str], scenes: list[str], ms: float = 50, mem: float = 100) -> dict:
    return {
        "id": id,
        "version": "1.0.0",
        "detects": detects,
        "scenes": scenes,
        "fps": 2,
        "cost": {"cpu": {"ms_per_frame": ms, "mem_mb": mem}},
    }


def _dev(id: str, cams: list[str], ms: float = 1000, streams: int = 4) -> dict:
    return {
        "id": id,
        "target": "cpu",
        "capacity": {"ms_per_s": ms, "mem_mb": 1000, "streams": streams},
        "cameras": cams,
    }


def instance(**over: Any) -> sch.Instance:
    doc = {
        "schema": sch.INSTANCE_SCHEMA,
        "algorithms": [
            _alg("car", ["car_event"], ["street"]),
            _alg("ped", ["person"], ["street"]),
            _alg("boat", ["boat"], ["sea"]),
        ],
        "cameras": [
            {"id": "c1", "zone": "city/a", "scenes": ["street"]},
            {"id": "c2", "zone": "city/a", "scenes": ["street"]},
            {"id": "c3", "zone": "city/b", "scenes": ["sea"]},
        ],
        "devices": [_dev("d1", ["c1", "c2", "c3"]), _dev("d2", ["c1", "c2"])],
        "policies": [{"zone": "city", "events": ["car_event", "person", "boat"], "priority": 10}],
    }
    doc.update(over)
    return sch.parse_instance(doc)


def ext(pins: list[dict] | None = None, exclusions: list[dict] | None = None) -> dict:
    return {"citybrain.pins/1": pins or [], "citybrain.exclusions/1": exclusions or []}


def triples(plan: sch.Plan) -> set[tuple[str, str, str]]:
    return {(a.camera, a.algorithm, a.device) for a in plan.assignments}


@pytest.mark.parametrize("solver", SOLVERS)
def test_camera_exclusion_is_never_placed_and_explained(solver: str) -> None:
    e = ext(exclusions=[{"algorithm": "car", "camera": "c1", "policy": "p-no-car"}])
    plan = sch.solve(instance(), solver=solver, time_limit=2, extensions=e)
    assert not any(c == "c1" and a == "car" for c, a, _ in triples(plan))
    assert ("c2", "car") in {(c, a) for c, a, _ in triples(plan)}  # other cameras unaffected
    un = {(u.camera, u.event): u.reason for u in plan.unserved}
    assert un[("c1", "car_event")].startswith("policy:")
    assert plan.objective == 40  # c1 person, c2 car+person, c3 boat; c1 car is excluded
    assert sch.check_plan(instance(), plan, e) == []


@pytest.mark.parametrize("solver", SOLVERS)
def test_device_exclusion_moves_the_algorithm_elsewhere(solver: str) -> None:
    e = ext(exclusions=[{"algorithm": "car", "device": "d1"}])
    plan = sch.solve(instance(), solver=solver, time_limit=2, extensions=e)
    cars = [t for t in triples(plan) if t[1] == "car"]
    assert cars and all(d == "d2" for _, _, d in cars)
    assert plan.objective == 50  # everything still served
    assert sch.check_plan(instance(), plan, e) == []


@pytest.mark.parametrize("solver", SOLVERS)
def test_pin_is_placed_even_without_scene_match_or_demand(solver: str) -> None:
    e = ext(pins=[{"camera": "c3", "algorithm": "car", "priority": 5, "policy": "p-pin"}])
    plan = sch.solve(instance(), solver=solver, time_limit=2, extensions=e)
    assert ("c3", "car", "d1") in triples(plan)  # only d1 reaches c3
    assert plan.objective == 50  # a pin adds nothing to the objective, costs nothing here
    assert sch.check_plan(instance(), plan, e) == []
    # without the extensions the same plan is wrong: the checker says why
    codes = {v.code for v in sch.check_plan(instance(), plan)}
    assert sch.ViolationCode.SCENE_MISMATCH in codes


@pytest.mark.parametrize("solver", SOLVERS)
def test_infeasible_pins_become_unserved_entries(solver: str) -> None:
    inst = instance(
        algorithms=[
            _alg("car", ["car_event"], ["street"]),
            _alg("ped", ["person"], ["street"]),
            _alg("boat", ["boat"], ["sea"]),
            _alg("huge", ["person"], ["street"], ms=600),  # 1200 ms/s: fits no device
        ]
    )
    e = ext(
        pins=[
            {"camera": "ghost", "algorithm": "car"},
            {"camera": "c1", "algorithm": "nope"},
            {"camera": "c1", "algorithm": "huge"},
            {"camera": "c2", "algorithm": "car"},
        ],
        exclusions=[{"algorithm": "car", "camera": "c2"}],
    )
    plan = sch.solve(inst, solver=solver, time_limit=2, extensions=e)
    pins = {(u.camera, u.event): u.reason for u in plan.unserved if u.event.startswith("pin:")}
    assert set(pins) == {
        ("ghost", "pin:car"),
        ("c1", "pin:nope"),
        ("c1", "pin:huge"),
        ("c2", "pin:car"),
    }
    assert all(r.startswith("infeasible pin: ") for r in pins.values())
    assert "not in the instance" in pins[("ghost", "pin:car")]
    assert "even when it is empty" in pins[("c1", "pin:huge")]
    assert "excluded" in pins[("c2", "pin:car")]
    assert sch.check_plan(inst, plan, e) == []


@pytest.mark.parametrize("solver", SOLVERS)
def test_pins_compete_for_capacity_and_the_loser_is_reported(solver: str) -> None:
    # one device, one decode slot, two pins on different cameras: the higher priority wins
    inst = instance(devices=[_dev("d1", ["c1", "c2", "c3"], streams=1)])
    e = ext(
        pins=[
            {"camera": "c1", "algorithm": "ped", "priority": 1},
            {"camera": "c2", "algorithm": "car", "priority": 9},
        ]
    )
    plan = sch.solve(inst, solver=solver, time_limit=2, extensions=e)
    assert ("c2", "car", "d1") in triples(plan)
    assert {t[0] for t in triples(plan)} == {"c2"}
    un = {(u.camera, u.event): u.reason for u in plan.unserved}
    assert un[("c1", "pin:ped")].startswith("infeasible pin: no device reaching c1")
    assert sch.check_plan(inst, plan, e) == []


def test_local_search_and_churn_never_drop_a_pin() -> None:
    inst = instance()
    e = ext(pins=[{"camera": "c1", "algorithm": "car"}])
    first = sch.solve(inst, solver="heuristic", time_limit=1, extensions=e)
    # the previous plan had the pin elsewhere: it is still placed (forced), checker-clean
    again = sch.solve(inst, previous=first, churn_weight=5, time_limit=1, extensions=e)
    assert any(c == "c1" and a == "car" for c, a, _ in triples(again))
    assert sch.churn(first, again) == (0, 0)  # nothing had to move


def test_checker_catches_excluded_assignments_and_missing_pins() -> None:
    inst = instance()
    plan = sch.solve(inst, time_limit=2)
    placed = plan.assignments[0]
    e = ext(
        pins=[{"camera": "c3", "algorithm": "car"}],
        exclusions=[{"algorithm": placed.algorithm, "camera": placed.camera}],
    )
    codes = [v.code for v in sch.check_plan(inst, plan, e)]
    assert sch.ViolationCode.EXCLUDED in codes
    assert sch.ViolationCode.PIN_MISSING in codes
    # a pin listed as infeasible although it is placed
    fake = plan.model_copy(
        update={
            "unserved": [
                *plan.unserved,
                sch.UnservedDemand(
                    camera=placed.camera,
                    event=f"pin:{placed.algorithm}",
                    reason="infeasible pin: made up",
                ),
            ]
        }
    )
    e2 = ext(pins=[{"camera": placed.camera, "algorithm": placed.algorithm}])
    codes = [v.code for v in sch.check_plan(inst, fake, e2)]
    assert codes == [sch.ViolationCode.PIN_PLACED_BUT_UNSERVED]
    # without extensions such an entry is not a demand at all
    assert sch.ViolationCode.UNKNOWN_DEMAND in {v.code for v in sch.check_plan(inst, fake)}


def test_exclusions_naming_absent_things_forbid_nothing() -> None:
    e = ext(
        exclusions=[
            {"algorithm": "car", "device": "offline-dev"},
            {"algorithm": "x", "camera": "c1"},
        ]
    )
    plan = sch.solve(instance(), time_limit=2, extensions=e)
    assert plan.objective == 50


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ([], "expected a JSON object"),
        ({"citybrain.pin/1": []}, "unknown key 'citybrain.pin/1'"),
        ({"citybrain.exclusions/1": [{"algorithm": "a"}]}, "names neither camera nor device"),
        ({"citybrain.pins/1": [{"camera": "c1"}]}, "citybrain.pins/1.0.algorithm"),
        ({"citybrain.pins/1": [{"camera": "c", "algorithm": "a", "priority": -1}]}, "priority"),
        ({"citybrain.pins/1": [{"camera": "c", "algorithm": "a", "extra": 1}]}, "extra"),
    ],
)
def test_bad_extensions_are_clear_errors(doc: Any, needle: str) -> None:
    with pytest.raises(sch.InvalidInstance, match="ext.json") as ei:
        sch.parse_extensions(doc, "ext.json")
    assert needle in str(ei.value)


def test_extension_files(tmp_path: Path) -> None:
    with pytest.raises(sch.InvalidInstance, match="no such file"):
        sch.load_extensions(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(sch.InvalidInstance, match="not JSON"):
        sch.load_extensions(tmp_path / "bad.json")
    (tmp_path / "ok.json").write_text(json.dumps(ext(pins=[{"camera": "c1", "algorithm": "car"}])))
    assert sch.load_extensions(tmp_path / "ok.json").pins[0].camera == "c1"


def test_instance_file_format_is_unchanged() -> None:
    """Extensions never enter the strict instance format."""
    doc = json.loads(instance().model_dump_json(by_alias=True))
    doc["extensions"] = ext()
    with pytest.raises(sch.InvalidInstance, match="extensions"):
        sch.parse_instance(doc)

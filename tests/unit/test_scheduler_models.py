"""Instance/plan models: validation errors name the field, zone globs, demand expansion."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import scheduler as sch
from scheduler._problem import compile_problem
from tests.conftest import REPO

EXAMPLE = REPO.parent / "shared" / "schemas" / "schedule-instance.example.json"


def example() -> dict:
    return json.loads(EXAMPLE.read_text())


def test_example_instance_loads() -> None:
    inst = sch.load_instance(EXAMPLE)
    assert [a.id for a in inst.algorithms] == ["manhole_missing", "drowning", "lobby_cargo"]
    assert inst.devices[0].capacity.streams == 16
    demands = sch.expand_demands(inst)
    assert demands[("cam-001", "manhole_cover_missing")] == 3
    assert demands[("cam-003", "cargo_carried")] == 1
    assert ("cam-003", "person_in_water") not in demands
    assert len(demands) == 5


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["devices"][0]["cameras"].append("cam-999"), "unknown camera 'cam-999'"),
        (lambda d: d["cameras"].append(dict(d["cameras"][0])), "duplicate id 'cam-001'"),
        (
            lambda d: d["algorithms"].append(dict(d["algorithms"][0])),
            "duplicate id 'manhole_missing'",
        ),
        (lambda d: d["devices"].append(copy.deepcopy(d["devices"][1])), "duplicate id 'edge-02'"),
        (lambda d: d["devices"][0]["cameras"].append("cam-001"), "listed twice"),
        (lambda d: d["devices"][0]["capacity"].update(ms_per_s=0), "devices.0.capacity.ms_per_s"),
        (lambda d: d["devices"][1]["capacity"].update(mem_mb=-5), "devices.1.capacity.mem_mb"),
        (lambda d: d["devices"][1]["capacity"].update(streams=0), "devices.1.capacity.streams"),
        (lambda d: d["policies"][0].update(priority=-1), "policies.0.priority"),
        (lambda d: d["policies"][0].update(zone="nowhere/*"), "matches no camera zone"),
        (lambda d: d["policies"][0].update(zone="/longhua"), "must not start or end"),
        (lambda d: d["cameras"][0].update(zone="a//b"), "empty segment"),
        (lambda d: d["cameras"][0].update(zone="a/../b"), "'..' segment"),
        (lambda d: d["algorithms"][0]["cost"]["cpu-x86"].update(ms_per_frame=0), "ms_per_frame"),
        (lambda d: d["algorithms"][0].update(fps=float("nan")), "algorithms.0.fps"),
        (lambda d: d["algorithms"][0].update(detects=[]), "algorithms.0.detects"),
        (lambda d: d["algorithms"][0].update(colour="red"), "algorithms.0.colour"),
        (lambda d: d.update(schema="citybrain.schedule-instance/2"), "schema"),
    ],
)
def test_bad_instances_name_the_problem(mutate, needle: str) -> None:
    d = example()
    mutate(d)
    with pytest.raises(sch.InvalidInstance) as ei:
        sch.parse_instance(d, "inst.json")
    assert needle in str(ei.value)
    assert str(ei.value).startswith("inst.json")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(sch.InvalidInstance, match="no such file"):
        sch.load_instance(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(sch.InvalidInstance, match="not JSON"):
        sch.load_instance(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(sch.InvalidInstance, match="expected a JSON object"):
        sch.load_instance(bad)
    with pytest.raises(sch.InvalidPlan, match="schema"):
        sch.parse_plan({"schema": "nope"})


@pytest.mark.parametrize(
    ("glob", "zone", "hit"),
    [
        ("longhua/*", "longhua/street-12", True),
        ("longhua/*", "longhua/street-12/north", True),  # covers sub-zones of a match
        ("longhua", "longhua/street-12", True),
        ("longhua/*", "longhua", False),
        ("long*", "longhua/x", True),
        ("*/street-*", "longhua/street-12", True),
        ("*/street-*", "longhua/sea-1", False),
        ("*street*", "longhua/street-12", False),  # '*' never crosses '/'
        ("**/street-*", "a/b/street-1", True),
        ("**", "anything/at/all", True),
        ("a/**/c", "a/c", True),
        ("a/**/c", "a/x/y/c", True),
        ("a/**/c", "a/x/y/d", False),
        ("Longhua/*", "longhua/x", False),
        ("longhua/street-1[0-2]", "longhua/street-12", True),
    ],
)
def test_zone_globs(glob: str, zone: str, hit: bool) -> None:
    assert sch.zone_matches(glob, zone) is hit


def test_highest_priority_wins_for_a_demand() -> None:
    d = example()
    d["policies"].append(
        {"zone": "longhua/street-*", "events": ["manhole_cover_missing"], "priority": 7}
    )
    d["policies"].append({"zone": "**", "events": ["manhole_cover_missing"], "priority": 2})
    inst = sch.parse_instance(d)
    dem = sch.expand_demands(inst)
    assert dem[("cam-001", "manhole_cover_missing")] == 7
    assert dem[("cam-002", "manhole_cover_missing")] == 3
    assert dem[("cam-003", "manhole_cover_missing")] == 2


def test_static_reasons() -> None:
    d = example()
    d["policies"].append({"zone": "longgang/*", "events": ["unicorn_sighting"], "priority": 1})
    d["algorithms"][2]["cost"] = {}  # lobby_cargo: no cost profile at all
    d["cameras"].append({"id": "cam-004", "zone": "longgang/tower-b", "scenes": ["lobby"]})
    inst = sch.parse_instance(d)
    prob = compile_problem(inst)
    reasons = {
        (prob.cam_ids[c], e): r
        for c, e, r in zip(prob.dem_cam, prob.dem_event, prob.dem_reason, strict=True)
    }
    assert reasons[("cam-003", "unicorn_sighting")] == "no algorithm detects unicorn_sighting"
    assert (
        reasons[("cam-003", "cargo_carried")] == "no cost profile for any reachable device target"
    )
    assert reasons[("cam-004", "cargo_carried")].startswith("no reachable device")
    assert reasons[("cam-001", "person_in_water")].startswith("no scene match")
    assert reasons[("cam-001", "manhole_cover_missing")] is None

"""``explain(camera, algorithm)``: one test per reason, each with its sentence."""

from __future__ import annotations

from datetime import datetime

import pytest

import knowledge_graph as kg
from knowledge_graph import Reason

MONDAY_NOON = datetime(2026, 11, 30, 12, 0)


@pytest.fixture
def g() -> kg.CityGraph:
    g = kg.CityGraph()
    g.seed()
    g.add_algorithm(
        "manhole",
        version="1.2.0",
        detects=["manhole_cover_missing"],
        scenes=["street", "sidewalk"],
        fps=2,
        cost={"cpu-x86": {"ms_per_frame": 40, "mem_mb": 180}},
    )
    g.add_algorithm(
        "drowning",
        version="0.9.1",
        detects=["person_in_water"],
        scenes=["sea_front"],
        fps=5,
        cost={"gpu-sm87": {"ms_per_frame": 9, "mem_mb": 600}},
    )
    g.add_algorithm(
        "parking",
        version="1.0.0",
        detects=["illegal_parking"],
        scenes=["street"],
        fps=1,
        cost={"cpu-x86": {"ms_per_frame": 10, "mem_mb": 100}},
    )
    g.add_camera("cam-1", zone="sz/longhua/street-12", scenes=["street"])
    g.add_camera("cam-2", zone="sz/longhua/seafront", scenes=["sea_front"])
    g.add_camera("cam-3", zone="sz/futian/street-1", scenes=["street"])
    g.add_device(
        "edge-cpu",
        target="cpu-x86",
        ms_per_s=1000,
        mem_mb=4000,
        streams=4,
        reaches=["cam-1", "cam-3"],
    )
    g.add_device(
        "edge-gpu",
        target="gpu-sm87",
        ms_per_s=1000,
        mem_mb=8000,
        streams=4,
        reaches=["cam-1", "cam-2"],
    )
    g.add_policy(
        kg.Policy(
            id="watch",
            zone="sz/longhua/*",
            events=["manhole_cover_missing", "person_in_water", "illegal_parking"],
            priority=3,
        )
    )
    return g


def test_applicable_with_path(g: kg.CityGraph) -> None:
    e = g.explain("cam-1", "manhole", at=MONDAY_NOON)
    assert e.reason is Reason.APPLICABLE and e.applicable and e.placed is None
    assert e.policy_events == ["manhole_cover_missing"] and e.policies == ["watch"]
    assert e.usable_devices == ["edge-cpu"]
    assert e.justifications[0]["path"] == [
        "camera:cam-1",
        "scene:street",
        "event:manhole_cover_missing",
        "algorithm:manhole",
    ]
    assert "street may have manhole_cover_missing" in e.sentence
    assert "can run on edge-cpu" in e.sentence


def test_no_scene_match_lists_both_sides(g: kg.CityGraph) -> None:
    e = g.explain("cam-2", "manhole", at=MONDAY_NOON)
    assert e.reason is Reason.NO_SCENE_MATCH and not e.applicable
    assert e.camera_scenes == ["sea_front"] and e.algorithm_scenes == ["street", "sidewalk"]
    assert "sees sea_front" in e.sentence and "applies to street, sidewalk" in e.sentence


def test_no_policy_event_for_the_zone(g: kg.CityGraph) -> None:
    e = g.explain("cam-3", "manhole", at=MONDAY_NOON)  # futian has no policy
    assert e.reason is Reason.NO_POLICY_EVENT
    assert "no active policy for zone sz/futian/street-1" in e.sentence
    # outside its time window a policy does not count either
    g.add_policy(
        kg.Policy(
            id="night",
            zone="sz/futian/*",
            events=["manhole_cover_missing"],
            priority=1,
            hours=kg.parse_hours("22-6"),
        )
    )
    assert g.explain("cam-3", "manhole", at=MONDAY_NOON).reason is Reason.NO_POLICY_EVENT
    night = datetime(2026, 11, 30, 23, 0)
    assert g.explain("cam-3", "manhole", at=night).reason is Reason.APPLICABLE


def test_no_cost_profile_for_reachable_targets(g: kg.CityGraph) -> None:
    g.add_camera("cam-4", zone="sz/longhua/beach", scenes=["sea_front"])
    g.add_device(
        "edge-cpu2", target="cpu-x86", ms_per_s=1000, mem_mb=4000, streams=4, reaches=["cam-4"]
    )
    e = g.explain("cam-4", "drowning", at=MONDAY_NOON)
    assert e.reason is Reason.NO_COST_PROFILE
    assert e.devices == {"edge-cpu2": "cpu-x86"} and e.cost_targets == ["gpu-sm87"]
    assert "devices' targets: cpu-x86" in e.sentence and "costs for gpu-sm87" in e.sentence


def test_no_device_reaches_camera(g: kg.CityGraph) -> None:
    g.add_camera("cam-5", zone="sz/longhua/x", scenes=["street"])
    e = g.explain("cam-5", "manhole", at=MONDAY_NOON)
    assert e.reason is Reason.NO_DEVICE and "no device reaches camera cam-5" in e.sentence


def test_excluded_by_policy_on_camera_and_on_devices(g: kg.CityGraph) -> None:
    g.add_policy(
        kg.Policy(
            id="no-manhole",
            zone="sz/*",
            priority=1,
            exclusions=[kg.Exclusion(algorithm="manhole", camera="cam-1")],
        )
    )
    e = g.explain("cam-1", "manhole", at=MONDAY_NOON)
    assert e.reason is Reason.EXCLUDED and e.excluded_by == ["no-manhole"]
    assert "excludes manhole on camera cam-1" in e.sentence
    g.add_policy(
        kg.Policy(
            id="no-cpu",
            zone="sz/*",
            priority=1,
            exclusions=[kg.Exclusion(algorithm="parking", device="edge-cpu")],
        )
    )
    e = g.explain("cam-1", "parking", at=MONDAY_NOON)
    assert e.reason is Reason.EXCLUDED and e.excluded_by == ["no-cpu"]
    assert "every device" in e.sentence


def test_capacity_from_placement_unserved_reason(g: kg.CityGraph) -> None:
    plan = {
        "schema": "citybrain.schedule-plan/1",
        "assignments": [
            {"camera": "cam-2", "algorithm": "drowning", "version": "0.9.1", "device": "edge-gpu"}
        ],
        "served": [{"camera": "cam-2", "event": "person_in_water"}],
        "unserved": [
            {
                "camera": "cam-1",
                "event": "manhole_cover_missing",
                "reason": "capacity: edge-cpu compute full (1000/1000 ms/s)",
            }
        ],
        "objective": 3,
        "solver": {"name": "greedy", "seconds": 0.1, "optimal": False, "bound": None},
    }
    e = g.explain("cam-1", "manhole", placement=plan, at=MONDAY_NOON)
    assert e.reason is Reason.CAPACITY and e.applicable and e.placed is False
    assert "edge-cpu compute full" in e.sentence
    plan["unserved"][0]["reason"] = "solver stopped early"
    e = g.explain("cam-1", "manhole", placement=plan, at=MONDAY_NOON)
    assert e.reason is Reason.UNSERVED and "solver stopped early" in e.sentence
    e = g.explain("cam-2", "drowning", placement=plan, at=MONDAY_NOON)
    assert e.reason is Reason.PLACED and e.placed and e.device == "edge-gpu"
    assert "runs on cam-2 on device edge-gpu" in e.sentence


def test_served_by_other_and_not_placed(g: kg.CityGraph) -> None:
    g.add_algorithm(
        "manhole2",
        version="1.0.0",
        detects=["manhole_cover_missing"],
        scenes=["street"],
        fps=1,
        cost={"cpu-x86": {"ms_per_frame": 5, "mem_mb": 50}},
    )
    plan = {
        "assignments": [
            {"camera": "cam-1", "algorithm": "manhole2", "version": "1.0.0", "device": "edge-cpu"}
        ],
        "served": [{"camera": "cam-1", "event": "manhole_cover_missing"}],
        "unserved": [],
    }
    e = g.explain("cam-1", "manhole", placement=plan, at=MONDAY_NOON)
    assert e.reason is Reason.SERVED_BY_OTHER and e.served_by == ["manhole2"]
    e = g.explain("cam-1", "parking", placement=plan, at=MONDAY_NOON)
    assert e.reason is Reason.NOT_PLACED


def test_pin_overrides_scene_and_policy(g: kg.CityGraph) -> None:
    g.add_policy(
        kg.Policy(
            id="pin", zone="sz/*", priority=5, pins=[kg.Pin(camera="cam-3", algorithm="parking")]
        )
    )
    e = g.explain("cam-3", "parking", at=MONDAY_NOON)
    assert e.reason is Reason.APPLICABLE and e.pinned_by == ["pin"]
    assert "pinned by policy pin" in e.sentence


def test_unknown_names_and_bad_plan(g: kg.CityGraph) -> None:
    with pytest.raises(kg.UnknownNode, match="unknown camera 'nope'"):
        g.explain("nope", "manhole")
    with pytest.raises(kg.UnknownNode, match="unknown algorithm 'nope'"):
        g.explain("cam-1", "nope")
    with pytest.raises(kg.GraphError, match="placement: assignments.0.camera"):
        g.explain(
            "cam-1", "manhole", placement={"assignments": [{"algorithm": "x"}]}, at=MONDAY_NOON
        )


def test_placement_on_an_excluded_device_is_flagged(g: kg.CityGraph) -> None:
    g.add_device(
        "edge-cpu3", target="cpu-x86", ms_per_s=1000, mem_mb=4000, streams=4, reaches=["cam-1"]
    )
    g.add_policy(
        kg.Policy(
            id="not-there",
            zone="sz/*",
            priority=1,
            exclusions=[kg.Exclusion(algorithm="manhole", device="edge-cpu3")],
        )
    )
    plan = {
        "assignments": [
            {"camera": "cam-1", "algorithm": "manhole", "version": "1.2.0", "device": "edge-cpu3"}
        ]
    }
    e = g.explain("cam-1", "manhole", placement=plan, at=MONDAY_NOON)
    assert e.reason is Reason.EXCLUDED and e.placed and e.device == "edge-cpu3"
    assert e.excluded_by == ["not-there"] and "excludes" in e.sentence

"""Policies: validation against the graph, time windows, pins and exclusions."""

from __future__ import annotations

from datetime import datetime

import pytest
from pydantic import ValidationError

import knowledge_graph as kg
from knowledge_graph import Weekday


@pytest.fixture
def g() -> kg.CityGraph:
    g = kg.CityGraph()
    g.seed()
    g.add_algorithm(
        "a1", version="1.0.0", detects=["fire_smoke"], scenes=["street"], fps=1, cost={}
    )
    g.add_camera("c1", zone="sz/longhua/street-1", scenes=["street"])
    g.add_device("d1", target="cpu-x86", ms_per_s=100, mem_mb=100, streams=1, reaches=["c1"])
    return g


def test_policy_model_validation() -> None:
    with pytest.raises(ValidationError, match="greater than 0"):
        kg.Policy(zone="a/*", events=["fire_smoke"], priority=0)
    with pytest.raises(ValidationError, match="needs events, pins or exclusions"):
        kg.Policy(zone="a/*", events=[], priority=1)
    with pytest.raises(ValidationError, match="invalid zone glob"):
        kg.Policy(zone="a b", events=["x"], priority=1)
    with pytest.raises(ValidationError, match="listed twice"):
        kg.Policy(zone="a", events=["x", "x"], priority=1)
    with pytest.raises(ValidationError, match="names neither camera nor device"):
        kg.Exclusion(algorithm="a1")
    with pytest.raises(ValidationError, match="empty"):
        kg.HourWindow(start=5, end=5)
    with pytest.raises(ValidationError):
        kg.Policy(zone="a", events=["x"], priority=1, days=["funday"])


def test_policy_validation_names_unknowns(g: kg.CityGraph) -> None:
    cases = [
        (dict(zone="sz/nanshan/*", events=["fire_smoke"]), "matches no known zone", "zone"),
        (dict(zone="sz/*", events=["fires"]), "unknown event 'fires'", "events"),
        (
            dict(zone="sz/*", pins=[{"camera": "cx", "algorithm": "a1"}]),
            "unknown camera 'cx'",
            "pins.0.camera",
        ),
        (
            dict(zone="sz/*", pins=[{"camera": "c1", "algorithm": "ax"}]),
            "unknown algorithm 'ax'",
            "pins.0.algorithm",
        ),
        (
            dict(zone="sz/*", exclusions=[{"algorithm": "a1", "device": "dx"}]),
            "unknown device 'dx'",
            "exclusions.0.device",
        ),
        (
            dict(zone="sz/*", exclusions=[{"algorithm": "a1", "camera": "cx"}]),
            "unknown camera 'cx'",
            "exclusions.0.camera",
        ),
    ]
    for fields, msg, field in cases:
        with pytest.raises(kg.PolicyError, match=msg) as ei:
            g.add_policy(kg.Policy(priority=1, **fields))
        assert ei.value.field == field
    assert g.policies == {}


def test_duplicate_policy_id_and_pin_exclusion_conflict(g: kg.CityGraph) -> None:
    g.add_policy(
        kg.Policy(
            id="p1",
            zone="sz/*",
            events=["fire_smoke"],
            priority=1,
            pins=[kg.Pin(camera="c1", algorithm="a1")],
        )
    )
    with pytest.raises(kg.PolicyError, match="already exists"):
        g.add_policy(kg.Policy(id="p1", zone="sz/*", events=["crowding"], priority=1))
    assert g.policies["p1"].events == ["fire_smoke"]  # not replaced
    with pytest.raises(kg.PolicyError, match="conflicts with its exclusion"):
        g.add_policy(
            kg.Policy(
                id="p2",
                zone="sz/*",
                priority=1,
                exclusions=[kg.Exclusion(algorithm="a1", camera="c1")],
            )
        )
    g.add_policy(
        kg.Policy(
            id="p3", zone="sz/*", priority=1, exclusions=[kg.Exclusion(algorithm="a1", device="d1")]
        )
    )
    assert g.remove_policy("p3").id == "p3"
    with pytest.raises(kg.UnknownNode, match="unknown policy 'p3'"):
        g.remove_policy("p3")


def test_zone_globs_follow_the_scheduler_rules() -> None:
    assert kg.zone_matches("longhua/*", "longhua/street-12")
    assert kg.zone_matches("longhua/*", "longhua/street-12/north")  # covers sub-zones
    assert not kg.zone_matches("longhua/*", "longhua")
    assert kg.zone_matches("longhua", "longhua")
    assert kg.zone_matches("longhua", "longhua/a")
    assert not kg.zone_matches("longhua", "longhuax/a")
    assert kg.zone_matches("*/street-?", "futian/street-1")
    assert not kg.zone_matches("street-*", "futian/street-1")  # * stays in one segment
    assert kg.zone_matches("**/street-*", "a/b/street-1")
    assert kg.zone_matches("**", "anything/at/all")
    assert not kg.zone_matches("Longhua/*", "longhua/x")


def test_zone_globs_agree_with_the_scheduler() -> None:
    """The scheduler has no matcher of its own (it uses this one); its indexed matching
    of many globs against many zones must agree with matching every pair directly."""
    import random

    import scheduler
    from scheduler._zones import match_policies

    assert scheduler.zone_matches is kg.zone_matches
    rng = random.Random(3)
    segs = ["a", "b", "ab", "street-1", "street-12"]
    globs = ["*", "**", "a", "a/*", "*/b", "**/street-*", "a/**/b", "street-?", "a*", "[ab]/*"]
    zones = {"/".join(rng.choice(segs) for _ in range(rng.randint(1, 4))) for _ in range(500)}
    indexed = match_policies(globs, zones)
    hits = 0
    for zone in zones:
        direct = [i for i, g in enumerate(globs) if kg.zone_matches(g, zone)]
        assert indexed[zone] == direct, zone
        hits += len(direct)
    assert 0 < hits < len(zones) * len(globs)  # neither all nor nothing matches


def test_time_windows() -> None:
    p = kg.Policy(
        zone="a",
        events=["x"],
        priority=1,
        hours=kg.parse_hours("7-19"),
        days=kg.parse_days("mon-fri"),
    )
    monday = datetime(2026, 11, 30)
    assert p.active_at(monday.replace(hour=7))
    assert p.active_at(monday.replace(hour=18, minute=59))
    assert not p.active_at(monday.replace(hour=19))
    assert not p.active_at(monday.replace(hour=6, minute=59))
    assert not p.active_at(datetime(2026, 11, 29, 12))  # sunday
    night = kg.Policy(zone="a", events=["x"], priority=1, hours=kg.parse_hours("22-6,12-13"))
    assert night.active_at(monday.replace(hour=23)) and night.active_at(monday.replace(hour=3))
    assert night.active_at(monday.replace(hour=12)) and not night.active_at(monday.replace(hour=9))
    always = kg.Policy(zone="a", events=["x"], priority=1)
    assert always.active_at(monday) and always.active_at(datetime(2026, 11, 29, 3))


def test_parse_days_and_hours() -> None:
    W = Weekday
    assert kg.parse_days("mon-fri") == [W.MON, W.TUE, W.WED, W.THU, W.FRI]
    assert kg.parse_days("sat,sun") == [W.SAT, W.SUN]
    assert kg.parse_days("fri-mon") == [W.MON, W.FRI, W.SAT, W.SUN]
    assert kg.parse_days("Mon-Wed,fri") == [W.MON, W.TUE, W.WED, W.FRI]
    for bad in ["monday", "mon-", "mon-fri-sat", "", "x"]:
        with pytest.raises(kg.PolicyError, match="invalid days"):
            kg.parse_days(bad)
    assert [str(w) for w in kg.parse_hours("7-19,21-24")] == ["7-19", "21-24"]
    for bad in ["7", "7-7", "25-3", "a-b", "-1-3", "7-19,"]:
        with pytest.raises(kg.PolicyError, match="invalid hours"):
            kg.parse_hours(bad)


def test_active_policies(g: kg.CityGraph) -> None:
    g.add_policy(
        kg.Policy(
            id="day", zone="sz/*", events=["fire_smoke"], priority=1, hours=kg.parse_hours("8-20")
        )
    )
    g.add_policy(
        kg.Policy(
            id="weekend",
            zone="sz/*",
            events=["crowding"],
            priority=2,
            days=kg.parse_days("sat,sun"),
        )
    )
    sat_night = datetime(2026, 11, 28, 23)
    assert [p.id for p in g.active_policies(sat_night)] == ["weekend"]
    assert [p.id for p in g.active_policies(datetime(2026, 11, 30, 9))] == ["day"]

"""Export as ``citybrain.schedule-instance/1`` (exact format) and import from it."""

from __future__ import annotations

import copy
import json
from datetime import datetime

import pytest

import knowledge_graph as kg
from tests.conftest import REPO

EXAMPLE = REPO.parent / "shared" / "schemas" / "schedule-instance.example.json"


@pytest.fixture
def example() -> dict:
    return json.loads(EXAMPLE.read_text())


def test_round_trip_of_the_example_file(example: dict) -> None:
    g = kg.import_instance(example)
    out = kg.export_instance(g)
    assert out == example
    # the exact JSON types too (ints stay ints, key order of each object as in the file)
    assert json.dumps(out, sort_keys=False) == json.dumps(example, sort_keys=False)
    g.check_indexes()


def test_round_trip_after_seed_and_through_persistence(example: dict, tmp_path) -> None:
    from sqlalchemy import create_engine

    g = kg.CityGraph()
    g.seed()
    kg.import_instance(example, graph=g)
    engine = create_engine(f"sqlite:///{tmp_path / 'kg.db'}")
    kg._persist.metadata.create_all(engine)
    kg.save(g, engine)
    assert kg.export_instance(kg.load(engine)) == example


def test_export_counts_only_effective_scenes_and_active_policies(example: dict) -> None:
    g = kg.import_instance(example)
    g.add_scene("intersection")
    g.record_inferred_scenes("cam-001", {"sidewalk": 0.9, "intersection": 0.3})
    g.add_policy(
        kg.Policy(
            id="night",
            zone="longgang/*",
            events=["cargo_carried"],
            priority=2,
            hours=kg.parse_hours("22-6"),
        )
    )
    noon = kg.export_instance(g, at=datetime(2026, 11, 30, 12))
    cam = next(c for c in noon["cameras"] if c["id"] == "cam-001")
    assert cam["scenes"] == ["street", "sidewalk"]
    assert len(noon["policies"]) == 2
    night = kg.export_instance(g, at=datetime(2026, 11, 30, 23))
    assert night["policies"][-1] == {
        "zone": "longgang/*",
        "events": ["cargo_carried"],
        "priority": 2,
    }
    g.reject_scene("cam-001", "street")
    cam = next(c for c in kg.export_instance(g)["cameras"] if c["id"] == "cam-001")
    assert cam["scenes"] == ["sidewalk"]
    # explicit policies replace the graph's
    assert kg.export_instance(g, policies=[])["policies"] == []


def test_pins_and_exclusions_travel_as_extensions(example: dict) -> None:
    g = kg.import_instance(example)
    assert "extensions" not in kg.export_instance(g, extensions=True)
    g.add_policy(
        kg.Policy(
            id="pin",
            zone="longhua/*",
            priority=4,
            pins=[kg.Pin(camera="cam-003", algorithm="lobby_cargo")],
            exclusions=[kg.Exclusion(algorithm="manhole_missing", device="edge-02")],
        )
    )
    expected = {
        kg.PINS_EXTENSION: [
            {"camera": "cam-003", "algorithm": "lobby_cargo", "priority": 4, "policy": "pin"}
        ],
        kg.EXCLUSIONS_EXTENSION: [
            {"algorithm": "manhole_missing", "device": "edge-02", "policy": "pin"}
        ],
    }
    assert kg.export_extensions(g) == expected
    plain = kg.export_instance(g)
    assert "extensions" not in plain and plain == example  # the format stays exact
    out = kg.export_instance(g, extensions=True)
    assert out["extensions"] == expected
    assert len(out["policies"]) == 2  # a pins-only policy adds no demand rows
    # importing an exported instance with extensions is accepted (extensions ignored)
    kg.import_instance(out)


def test_export_is_accepted_by_the_scheduler_parser(example: dict) -> None:
    from scheduler import parse_instance

    g = kg.CityGraph()
    g.seed()
    kg.import_instance(example, graph=g)
    # things the format cannot say are left out, not half-said
    g.add_algorithm("nothing", version="1.0.0", detects=[], scenes=["street"], fps=1, cost={})
    g.add_camera("cam-x", zone="futian/a", scenes=[])
    g.add_camera("cam-y", zone="nanshan/b", scenes=["park"])
    g.add_policy(kg.Policy(id="p-nanshan", zone="nanshan/*", events=["crowding"], priority=1))
    g.remove_node(kg.NodeType.CAMERA, "cam-y")  # the policy now covers no camera
    doc = kg.export_instance(g)
    assert "nothing" not in [a["id"] for a in doc["algorithms"]]
    assert [p["zone"] for p in doc["policies"]] == ["longhua/*", "longgang/*"]
    inst = parse_instance(doc)
    assert [c.id for c in inst.cameras] == ["cam-001", "cam-002", "cam-003", "cam-x"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema="citybrain.schedule-instance/2"), "schema"),
        (
            lambda d: d["devices"][0]["cameras"].append("cam-999"),
            "devices.0: unknown camera 'cam-999'",
        ),
        (lambda d: d["devices"][1]["capacity"].update(streams=0), "devices.1.capacity.streams"),
        (lambda d: d["devices"][0]["capacity"].update(ms_per_s=-1), "devices.0.capacity.ms_per_s"),
        (
            lambda d: d["cameras"].append(dict(d["cameras"][0])),
            "cameras.3: camera 'cam-001' already exists",
        ),
        (lambda d: d["cameras"][0].update(zone="a//b"), "cameras.0: invalid zone path"),
        (
            lambda d: d["policies"].append({"zone": "nowhere/*", "events": ["x"], "priority": 1}),
            "policies.2: .*matches no known zone",
        ),
        (
            lambda d: d["algorithms"][0]["cost"]["cpu-x86"].update(mem_mb=0),
            "algorithms.0.cost.cpu-x86.mem_mb",
        ),
        (lambda d: d["algorithms"][0].pop("fps"), "algorithms.0.fps"),
    ],
)
def test_import_rejects_bad_instances(example: dict, mutate, message: str) -> None:
    doc = copy.deepcopy(example)
    mutate(doc)
    with pytest.raises(kg.GraphError, match=message):
        kg.import_instance(doc)


def test_export_refuses_a_camera_without_zone_or_device_without_target(example: dict) -> None:
    g = kg.import_instance(example)
    g.remove_edge(kg.EdgeType.IN_ZONE, "cam-001", "longhua/street-12")
    with pytest.raises(kg.GraphError, match="camera 'cam-001' is in no zone"):
        kg.export_instance(g)
    g.set_camera_zone("cam-001", "longhua/street-12")
    g.remove_edge(kg.EdgeType.HAS_TARGET, "edge-01", "gpu-sm87")
    with pytest.raises(kg.GraphError, match="device 'edge-01' has no hardware target"):
        kg.export_instance(g)

"""Ontology and graph validation: node/edge types, ids, zone hierarchy, seed and
extensions, algorithms from manifests, scene context (operator / inferred)."""

from __future__ import annotations

import pytest

import knowledge_graph as kg
from edge_agent.protocol import Manifest
from knowledge_graph import EdgeType as E
from knowledge_graph import NodeType as N

SHA = "0" * 64


def manifest(aid: str = "manhole", version: str = "1.0.0", **kw) -> Manifest:
    body = {
        "id": aid,
        "version": version,
        "task": "detect",
        "labels": ["manhole_cover"],
        "input": {"shape": ["N", 3, 64, 64], "preprocess": {"resize": [64, 64]}},
        "postprocess": {"output": "boxes"},
        "scenes": ["street", "sidewalk"],
        "detects": ["manhole_cover_missing"],
        "fps": 2,
        "cost": {"cpu-x86": {"ms_per_frame": 40.0, "mem_mb": 180}},
        "files": {
            "model.onnx": {"sha256": SHA, "size": 1},
            "golden/input.npy": {"sha256": SHA, "size": 1},
            "golden/output.npy": {"sha256": SHA, "size": 1},
        },
    }
    body.update(kw)
    return Manifest.model_validate(body)


@pytest.fixture
def g() -> kg.CityGraph:
    graph = kg.CityGraph()
    graph.seed()
    return graph


def test_seed_has_common_scenes_events_and_is_idempotent(g: kg.CityGraph) -> None:
    for s in [
        "street",
        "sidewalk",
        "intersection",
        "parking",
        "lobby",
        "sea_front",
        "river_bank",
        "park",
        "construction_site",
    ]:
        assert g.has(N.SCENE, s)
    for e in [
        "manhole_cover_missing",
        "person_in_water",
        "cargo_carried",
        "illegal_parking",
        "fire_smoke",
        "crowding",
        "fallen_person",
        "road_debris",
    ]:
        assert g.has(N.EVENT, e)
    assert "person_in_water" in g.scene_events("sea_front")
    assert "person" in g.event_objects("person_in_water")
    before = g.stats()
    assert g.seed() == {"nodes": 0, "edges": 0}
    assert g.stats() == before
    g.check_indexes()


def test_duplicate_ids_are_refused_per_type(g: kg.CityGraph) -> None:
    with pytest.raises(kg.DuplicateNode, match="scene 'street' already exists"):
        g.add_scene("street")
    g.add_camera("cam-1", zone="sz/a", scenes=["street"])
    with pytest.raises(kg.DuplicateNode, match="camera 'cam-1'"):
        g.add_camera("cam-1", zone="sz/b", scenes=["park"])
    # the same id may name nodes of different types
    g.add_object("street")
    assert g.has(N.OBJECT, "street") and g.has(N.SCENE, "street")


def test_unknown_nodes_are_named(g: kg.CityGraph) -> None:
    with pytest.raises(kg.UnknownNode, match="unknown scene 'seafront'"):
        g.add_camera("cam-1", zone="sz/a", scenes=["seafront"])
    assert not g.has(N.CAMERA, "cam-1")  # nothing half-added
    with pytest.raises(kg.UnknownNode, match="unknown camera 'ghost'"):
        g.add_device(
            "d1", target="cpu-x86", ms_per_s=1000, mem_mb=100, streams=2, reaches=["ghost"]
        )
    assert not g.has(N.DEVICE, "d1")
    with pytest.raises(kg.UnknownNode, match="unknown event 'no_such_event'"):
        g.add_scene("harbour", may_have=["no_such_event"])
    with pytest.raises(kg.UnknownNode, match="camera"):
        g.add_edge(E.SEES, "nobody", "street")
    with pytest.raises(kg.UnknownNode, match="unknown camera"):
        g.applicable("nobody")


def test_wrong_edge_type_for_node_types(g: kg.CityGraph) -> None:
    g.add_camera("cam-1", zone="sz/a", scenes=["street"])
    with pytest.raises(kg.InvalidEdge, match="'sees' cannot link a scene to a camera"):
        g.add_edge(E.SEES, (N.SCENE, "street"), (N.CAMERA, "cam-1"))
    with pytest.raises(kg.InvalidEdge, match="'involves' cannot link a scene"):
        g.add_edge(E.INVOLVES, (N.SCENE, "street"), (N.OBJECT, "person"))
    with pytest.raises(kg.InvalidEdge, match="in_zone"):
        g.add_edge(E.IN_ZONE, (N.CAMERA, "cam-1"), (N.SCENE, "street"))
    # a camera is in one zone only
    g.add_zone("sz/b")
    with pytest.raises(kg.InvalidEdge, match="already in zone 'sz/a'"):
        g.add_edge(E.IN_ZONE, "cam-1", "sz/b")
    g.set_camera_zone("cam-1", "sz/b")
    assert g.zone_of("cam-1") == "sz/b"
    g.check_indexes()


def test_bad_ids_and_zone_paths(g: kg.CityGraph) -> None:
    for bad in ["", "a b", "/x", "x/", "a//b", "a/*", "a/../b"]:
        with pytest.raises(kg.GraphError, match="zone path"):
            g.add_camera("cam-x", zone=bad, scenes=[])
    with pytest.raises(kg.GraphError, match="invalid camera id"):
        g.add_camera("cam/1", zone="sz", scenes=[])
    with pytest.raises(kg.GraphError, match="invalid device id"):
        g.add_device("+", target="t", ms_per_s=1, mem_mb=1, streams=1)


def test_zone_hierarchy_and_cycles(g: kg.CityGraph) -> None:
    g.add_camera("c1", zone="sz/longhua/street-1", scenes=["street"])
    g.add_camera("c2", zone="sz/longhua/park-2", scenes=["park"])
    g.add_camera("c3", zone="sz/futian", scenes=["park"])
    assert g.zone_parents("sz/longhua/street-1") == ["sz/longhua"]
    assert sorted(g.cameras_in_zone("sz/longhua")) == ["c1", "c2"]
    assert sorted(g.cameras_in_zone("sz")) == ["c1", "c2", "c3"]
    assert g.cameras_in_zone("sz", recursive=False) == []
    with pytest.raises(kg.ZoneCycle, match="cycle"):
        g.add_edge(E.PART_OF, "sz", "sz/longhua/street-1")
    with pytest.raises(kg.ZoneCycle, match="itself"):
        g.add_edge(E.PART_OF, "sz", "sz")
    # a zone may also belong to a second parent, as long as no cycle appears
    g.add_zone("districts/north")
    g.add_edge(E.PART_OF, "sz/longhua", "districts/north")
    assert sorted(g.cameras_in_zone("districts/north")) == ["c1", "c2"]
    with pytest.raises(kg.ZoneCycle):
        g.add_edge(E.PART_OF, "districts", "sz/longhua/park-2")
    g.check_indexes()


def test_merge_ontology_validates_before_adding(g: kg.CityGraph) -> None:
    before = g.stats()
    doc = kg.parse_ontology(
        {"scenes": {"harbour": {"may_have": ["person_in_water", "oil_spill"]}}}, source="x.json"
    )
    with pytest.raises(kg.UnknownNode, match="unknown event 'oil_spill'"):
        g.merge_ontology(doc)
    assert g.stats() == before
    doc = kg.parse_ontology(
        {
            "objects": {"oil": "oil on water"},
            "events": {"oil_spill": {"involves": ["oil"]}},
            "scenes": {"harbour": {"may_have": ["person_in_water", "oil_spill"]}},
        }
    )
    assert g.merge_ontology(doc) == {"nodes": 3, "edges": 3}
    assert g.scene_events("harbour") == ["person_in_water", "oil_spill"]
    with pytest.raises(kg.GraphError, match=r"f.json: scenes.x.bogus: Extra inputs"):
        kg.parse_ontology({"scenes": {"x": {"bogus": 1}}}, source="f.json")
    with pytest.raises(kg.GraphError, match="not valid JSON"):
        kg.parse_ontology("{", source="f.json")


def test_algorithm_from_manifest_and_versions(g: kg.CityGraph) -> None:
    created = g.add_algorithm_from_manifest(manifest())
    assert created == []
    assert g.algorithm_scenes("manhole") == ["street", "sidewalk"]
    assert g.algorithm_detects("manhole") == ["manhole_cover_missing"]
    assert g.algorithm_cost("manhole") == {"cpu-x86": {"ms_per_frame": 40.0, "mem_mb": 180.0}}
    # a newer version replaces scenes/detects/cost; an older one is only recorded
    g.add_algorithm_from_manifest(
        manifest(
            version="1.1.0",
            scenes=["street"],
            cost={"gpu-sm87": {"ms_per_frame": 6, "mem_mb": 400}},
        )
    )
    g.add_algorithm_from_manifest(manifest(version="0.9.0", scenes=["park"]))
    info = g.node(N.ALGORITHM, "manhole")
    assert info["version"] == "1.1.0"
    assert info["versions"] == ["0.9.0", "1.0.0", "1.1.0"]
    assert g.algorithm_scenes("manhole") == ["street"]
    assert list(g.algorithm_cost("manhole")) == ["gpu-sm87"]
    assert "manhole" not in g.algorithms_for_scene("sidewalk")
    # unknown names: created (and reported) by default, refused when strict
    created = g.add_algorithm_from_manifest(
        manifest("oil", scenes=["harbour"], detects=["oil_spill", "person"])
    )
    assert created == ["event:oil_spill", "scene:harbour"]
    assert g.has(N.EVENT, "oil_spill") and "oil_spill" in g.scene_events("harbour")
    assert g.has_edge(E.DETECTS, "oil", (N.OBJECT, "person"))
    with pytest.raises(kg.UnknownNode, match="unknown scene 'dock'"):
        g.add_algorithm_from_manifest(manifest("x", scenes=["dock"]), create_missing=False)
    assert not g.has(N.ALGORITHM, "x")
    g.check_indexes()


def test_algorithm_bad_cost_and_fps(g: kg.CityGraph) -> None:
    with pytest.raises(kg.InvalidEdge, match="ms_per_frame must be > 0"):
        g.add_algorithm(
            "a",
            version="1.0.0",
            detects=[],
            scenes=[],
            fps=1,
            cost={"cpu-x86": {"ms_per_frame": 0, "mem_mb": 1}},
        )
    with pytest.raises(kg.InvalidEdge, match="needs a number mem_mb"):
        g.add_algorithm(
            "a",
            version="1.0.0",
            detects=[],
            scenes=[],
            fps=1,
            cost={"cpu-x86": {"ms_per_frame": 1}},
        )
    with pytest.raises(kg.InvalidEdge, match="needs a number ms_per_frame"):
        g.add_algorithm(
            "a",
            version="1.0.0",
            detects=[],
            scenes=[],
            fps=1,
            cost={"cpu-x86": {"ms_per_frame": "40", "mem_mb": 1}},
        )
    with pytest.raises(kg.InvalidEdge, match="ms_per_frame must be > 0, got inf"):
        g.add_algorithm(
            "a",
            version="1.0.0",
            detects=[],
            scenes=[],
            fps=1,
            cost={"cpu-x86": {"ms_per_frame": float("inf"), "mem_mb": 1}},
        )
    with pytest.raises(kg.GraphError, match="fps must be > 0"):
        g.add_algorithm("a", version="1.0.0", detects=[], scenes=[], fps=0, cost={})
    with pytest.raises(kg.GraphError, match="not a semantic version"):
        g.add_algorithm("a", version="v1", detects=[], scenes=[], fps=1, cost={})
    assert not g.has(N.ALGORITHM, "a")


def test_device_capacity_validation(g: kg.CityGraph) -> None:
    for kw, field in [
        ({"ms_per_s": 0}, "ms_per_s"),
        ({"mem_mb": -5}, "mem_mb"),
        ({"streams": 0}, "streams"),
        ({"streams": 1.5}, "streams"),
    ]:
        args = {"ms_per_s": 1000, "mem_mb": 100, "streams": 4} | kw
        with pytest.raises(kg.GraphError, match=field) as ei:
            g.add_device("d", target="cpu-x86", **args)
        assert ei.value.field == field
    assert not g.has(N.DEVICE, "d")


def test_scene_context_operator_inferred_confirm_reject(g: kg.CityGraph) -> None:
    g.add_camera("c", zone="sz/a", scenes=["street"])
    calls = []

    def classifier(frames):
        calls.append(len(frames))
        return {"street": 0.9, "sidewalk": 0.7, "park": 0.2}

    recorded = g.infer_scenes("c", ["f1", "f2"], classifier)
    assert calls == [2]
    assert recorded == ["sidewalk", "park"]  # the operator's street is left alone
    links = {ln.scene: ln for ln in g.scene_links("c")}
    assert links["street"].source == "operator"
    assert links["sidewalk"].source == "inferred" and links["sidewalk"].confidence == 0.7
    assert g.camera_scenes("c") == ["street", "sidewalk"]  # park below the 0.5 threshold
    g.confirm_scene("c", "park")
    assert "park" in g.camera_scenes("c")
    g.reject_scene("c", "sidewalk")
    assert "sidewalk" not in g.camera_scenes("c")
    # re-inference does not bring a rejected or confirmed scene back / change it
    g.record_inferred_scenes("c", {"sidewalk": 0.99, "park": 0.1})
    assert "sidewalk" not in g.camera_scenes("c") and "park" in g.camera_scenes("c")
    # operator override: exactly these scenes
    g.set_camera_scenes("c", ["park", "plaza"])
    assert g.camera_scenes("c") == ["park", "plaza"]
    assert {ln.scene for ln in g.scene_links("c") if ln.rejected} == {"sidewalk"}
    with pytest.raises(kg.UnknownNode, match="unknown scene 'beach'"):
        g.record_inferred_scenes("c", {"beach": 0.9})
    with pytest.raises(kg.InvalidEdge, match=r"must be in \[0, 1\]"):
        g.record_inferred_scenes("c", {"park": 1.5})
    with pytest.raises(kg.GraphError, match="no keyframes"):
        g.infer_scenes("c", [], classifier)
    g.check_indexes()


def test_remove_node_cleans_indexes_and_respects_policies(g: kg.CityGraph) -> None:
    g.add_algorithm_from_manifest(manifest())
    g.add_camera("c", zone="sz/a", scenes=["street"])
    g.add_device("d", target="cpu-x86", ms_per_s=1000, mem_mb=500, streams=2, reaches=["c"])
    assert [a.algorithm for a in g.applicable("c")] == ["manhole"]
    g.add_policy(
        kg.Policy(
            id="p1",
            zone="sz/*",
            events=["manhole_cover_missing"],
            priority=1,
            pins=[kg.Pin(camera="c", algorithm="manhole")],
        )
    )
    with pytest.raises(kg.GraphError, match="named by policies"):
        g.remove_node(N.CAMERA, "c")
    g.remove_policy("p1")
    g.remove_node(N.ALGORITHM, "manhole")
    assert g.applicable("c") == []
    g.remove_node(N.CAMERA, "c")
    assert g.device_cameras("d") == []
    g.remove_node(N.SCENE, "street")
    g.check_indexes()

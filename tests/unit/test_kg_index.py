"""The secondary indexes stay in step with the graph through random mutations:
``applicable`` (index lookups) equals a brute-force walk over the networkx graph."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import knowledge_graph as kg
from knowledge_graph import EdgeType as E
from knowledge_graph import NodeType as N


def _indexed(g: kg.CityGraph, camera: str) -> dict[str, set[tuple[str, str | None]]]:
    return {
        a.algorithm: {(j.scene, j.event) for j in a.justifications} for a in g.applicable(camera)
    }


def _pick(rng: random.Random, items: list[str], most: int) -> list[str]:
    return rng.sample(items, rng.randint(0, min(most, len(items))))


def _random_graph(rng: random.Random) -> kg.CityGraph:
    g = kg.CityGraph(scene_threshold=rng.choice([0.3, 0.5, 0.8]))
    scenes = [f"s{i}" for i in range(rng.randint(2, 8))]
    events = [f"e{i}" for i in range(rng.randint(2, 10))]
    for e in events:
        g.add_event(e)
    for s in scenes:
        g.add_scene(s, may_have=rng.sample(events, rng.randint(0, len(events))))
    for i in range(rng.randint(1, 15)):
        g.add_algorithm(
            f"a{i}",
            version="1.0.0",
            detects=_pick(rng, events, 3),
            scenes=_pick(rng, scenes, 3),
            fps=1,
            cost={},
        )
    for i in range(rng.randint(1, 10)):
        g.add_camera(f"c{i}", zone=f"z{rng.randint(0, 2)}/x", scenes=[])
        g.record_inferred_scenes(
            f"c{i}", {s: round(rng.random(), 2) for s in _pick(rng, scenes, 3)}
        )
        for s in _pick(rng, scenes, 2):
            g.add_edge(E.SEES, f"c{i}", s, source="operator")
    return g


def _mutate(g: kg.CityGraph, rng: random.Random) -> None:
    op = rng.randrange(9)
    cams, algos = g.nodes(N.CAMERA), g.nodes(N.ALGORITHM)
    scenes, events = g.nodes(N.SCENE), g.nodes(N.EVENT)
    if op == 0 and algos:
        g.remove_node(N.ALGORITHM, rng.choice(algos))
    elif op == 1 and scenes and events:
        s, e = rng.choice(scenes), rng.choice(events)
        if g.has_edge(E.MAY_HAVE, s, e):
            g.remove_edge(E.MAY_HAVE, s, e)
        else:
            g.add_edge(E.MAY_HAVE, s, e)
    elif op == 2 and cams and scenes:
        c, s = rng.choice(cams), rng.choice(scenes)
        g.add_edge(E.SEES, c, s, source="inferred", confidence=round(rng.random(), 2))
    elif op == 3 and cams:
        c = rng.choice(cams)
        links = g.scene_links(c)
        if links:
            link = rng.choice(links)
            rng.choice([g.confirm_scene, g.reject_scene])(c, link.scene)
    elif op == 4 and algos and scenes:
        a, s = rng.choice(algos), rng.choice(scenes)
        if g.has_edge(E.APPLIES_TO, a, s):
            g.remove_edge(E.APPLIES_TO, a, s)
        else:
            g.add_edge(E.APPLIES_TO, a, s)
    elif op == 5 and algos and events:
        a, e = rng.choice(algos), rng.choice(events)
        if g.has_edge(E.DETECTS, a, e):
            g.remove_edge(E.DETECTS, a, e)
        else:
            g.add_edge(E.DETECTS, a, e)
    elif op == 6 and scenes and len(scenes) > 1:
        g.remove_node(N.SCENE, rng.choice(scenes))
    elif op == 7 and cams:
        g.remove_node(N.CAMERA, rng.choice(cams))
    elif op == 8 and scenes:
        g.add_algorithm(
            f"n{rng.randrange(10**6)}",
            version="2.0.0",
            detects=rng.sample(events, min(len(events), 2)),
            scenes=rng.sample(scenes, 1),
            fps=2,
            cost={"cpu-x86": {"ms_per_frame": 1, "mem_mb": 1}},
        )
    elif cams:
        c = rng.choice(cams)
        g.set_camera_scenes(c, _pick(rng, scenes, 2))


def _assert_consistent(g: kg.CityGraph) -> None:
    g.check_indexes()
    for c in g.nodes(N.CAMERA):
        assert _indexed(g, c) == g.applicable_bruteforce(c)
        for a in g.nodes(N.ALGORITHM):
            one = g.applicable_to(c, a)
            assert (one.hits if one else None) == next(
                (x.hits for x in g.applicable(c) if x.algorithm == a), None
            )


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), steps=st.integers(0, 40))
def test_applicable_matches_bruteforce_after_random_mutations(seed: int, steps: int) -> None:
    rng = random.Random(seed)
    g = _random_graph(rng)
    _assert_consistent(g)
    for _ in range(steps):
        _mutate(g, rng)
    _assert_consistent(g)


def test_justification_paths_are_real_graph_paths() -> None:
    rng = random.Random(7)
    g = _random_graph(rng)
    for c in g.nodes(N.CAMERA):
        for a in g.applicable(c):
            for j in a.justifications:
                p = j.path
                assert g.g.has_edge(p[0], p[1], key="sees")
                if j.event is None:
                    assert g.g.has_edge(p[2], p[1], key="applies_to")
                else:
                    assert g.g.has_edge(p[1], p[2], key="may_have")
                    assert g.g.has_edge(p[3], p[2], key="detects")
                    assert g.g.has_edge(p[3], p[1], key="applies_to")


def test_check_indexes_detects_drift() -> None:
    g = kg.CityGraph()
    g.seed()
    g.add_camera("c", zone="z", scenes=["street"])
    g._scene_algos["street"] = {"ghost": None}
    with pytest.raises(kg.GraphError, match="_scene_algos"):
        g.check_indexes()

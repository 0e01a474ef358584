"""Persistence in the catalog database: round trip, atomic replace, stale writers,
migration creating the tables; PostgreSQL when reachable."""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import datetime

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import StatementError

import knowledge_graph as kg
from knowledge_graph import NodeType as N
from knowledge_graph._persist import kg_nodes, metadata
from tests.conftest import port_answers

PG_URL = os.environ.get(
    "CITYBRAIN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _graph() -> kg.CityGraph:
    g = kg.CityGraph(scene_threshold=0.6)
    g.seed()
    g.add_algorithm(
        "manhole",
        version="1.2.0",
        detects=["manhole_cover_missing"],
        scenes=["street", "sidewalk"],
        fps=2,
        cost={"cpu-x86": {"ms_per_frame": 40.0, "mem_mb": 180}},
    )
    g.add_algorithm("manhole", version="1.0.0", detects=[], scenes=[], fps=1, cost={})
    g.add_camera("cam-1", zone="sz/longhua/street-12", scenes=["street"])
    g.record_inferred_scenes("cam-1", {"sidewalk": 0.55, "intersection": 0.9})
    g.reject_scene("cam-1", "intersection")
    g.add_device(
        "edge-1", target="cpu-x86", ms_per_s=1000, mem_mb=4000, streams=4, reaches=["cam-1"]
    )
    g.add_policy(
        kg.Policy(
            id="p1",
            zone="sz/*",
            events=["manhole_cover_missing"],
            priority=3,
            hours=kg.parse_hours("7-19"),
            days=kg.parse_days("mon-fri"),
            pins=[kg.Pin(camera="cam-1", algorithm="manhole")],
        )
    )
    return g


def _same(a: kg.CityGraph, b: kg.CityGraph) -> None:
    assert list(a.g.nodes(data=True)) == list(b.g.nodes(data=True))
    assert list(a.g.edges(keys=True, data=True)) == list(b.g.edges(keys=True, data=True))
    assert a.policies == b.policies
    assert a.scene_threshold == b.scene_threshold
    b.check_indexes()
    monday = datetime(2026, 11, 30, 9)
    assert kg.export_instance(a, at=monday) == kg.export_instance(b, at=monday)
    for c in a.nodes(N.CAMERA):
        assert [x.to_dict() for x in a.applicable(c)] == [x.to_dict() for x in b.applicable(c)]


def _round_trip(engine) -> None:
    assert kg.load(engine).stats()["cameras"] == 0  # nothing stored yet
    g = _graph()
    assert kg.save(g, engine) == 1
    loaded = kg.load(engine)
    assert loaded.revision == 1
    _same(g, loaded)
    # a change saved from the loaded copy replaces the rows
    loaded.remove_policy("p1")
    loaded.remove_node(N.CAMERA, "cam-1")
    assert kg.save(loaded, engine) == 2
    again = kg.load(engine)
    _same(loaded, again)
    assert kg.stored_revision(engine) == 2
    # the first copy is stale now: refused, nothing overwritten
    with pytest.raises(kg.StaleGraph, match="revision 2"):
        kg.save(g, engine)
    assert not kg.load(engine).has(N.CAMERA, "cam-1")
    assert kg.save(g, engine, force=True) == 3
    assert kg.load(engine).has(N.CAMERA, "cam-1")


def test_sqlite_round_trip(tmp_path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'kg.db'}")
    metadata.create_all(engine)
    _round_trip(engine)


def test_failed_save_leaves_the_stored_graph_intact(tmp_path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'kg.db'}")
    metadata.create_all(engine)
    g = _graph()
    kg.save(g, engine)
    g2 = kg.load(engine)
    g2.add_camera("cam-2", zone="sz/x", scenes=["park"])
    g2.update_node(N.CAMERA, "cam-2", bad=object())  # not JSON: the insert fails midway
    with pytest.raises(StatementError, match="not JSON serializable"):
        kg.save(g2, engine)
    stored = kg.load(engine)
    assert stored.revision == 1 and not stored.has(N.CAMERA, "cam-2")
    _same(g, stored)


def test_load_rejects_corrupt_rows(tmp_path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'kg.db'}")
    metadata.create_all(engine)
    kg.save(_graph(), engine)
    with engine.begin() as conn:
        conn.execute(kg_nodes.insert().values(seq=10**6, type="planet", node_id="x", attrs={}))
    with pytest.raises(kg.GraphError, match="unknown type 'planet'"):
        kg.load(engine)


def test_catalog_migration_creates_the_tables(tmp_path) -> None:
    from cloud.catalog.db import make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    migrate(engine)
    names = set(inspect(engine).get_table_names())
    assert {"kg_meta", "kg_nodes", "kg_edges", "kg_policies"} <= names
    _round_trip(engine)


@pytest.mark.postgres
def test_postgres_round_trip() -> None:
    # as tests/integration/test_catalog_postgres.py: skip only where PostgreSQL is not
    # installed; an installed server that does not answer or refuses us is a failure
    if shutil.which("psql") is None:
        pytest.skip("PostgreSQL is not installed on this machine (no psql)")
    if not port_answers(5432):
        pytest.fail("PostgreSQL is installed but does not answer on 127.0.0.1:5432")
    schema = f"kg_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as e:  # noqa: BLE001 - the server answers but refuses us
        admin.dispose()
        pytest.fail(f"PostgreSQL at {PG_URL} is installed but not usable: {e}")
    engine = create_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        metadata.create_all(engine)
        _round_trip(engine)
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

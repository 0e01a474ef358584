"""The graph and its policies in the catalog database (SQLAlchemy Core tables on
``metadata``, created by the catalog's Alembic migration).

``save`` replaces the stored graph in one transaction and bumps a revision;
it refuses (``StaleGraph``) when the stored revision is not the one the graph was
loaded from, so that two writers never silently overwrite each other. ``load`` reads
one consistent snapshot.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from knowledge_graph._errors import GraphError, StaleGraph
from knowledge_graph._graph import CityGraph, split_key
from knowledge_graph._ontology import EdgeType, NodeType
from knowledge_graph._policy import Policy

metadata = MetaData()

GRAPH_NAME = "city"

kg_meta = Table(
    "kg_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("revision", Integer, nullable=False),
    Column("scene_threshold", Float, nullable=False),
    Column("saved_at", DateTime(timezone=True), nullable=False),
)

kg_nodes = Table(
    "kg_nodes",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("type", String(16), nullable=False, index=True),
    Column("node_id", String(600), nullable=False),
    Column("attrs", JSON(none_as_null=True), nullable=True),
)

kg_edges = Table(
    "kg_edges",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("type", String(16), nullable=False, index=True),
    Column("src", String(620), nullable=False),
    Column("dst", String(620), nullable=False),
    Column("attrs", JSON(none_as_null=True), nullable=True),
)

kg_policies = Table(
    "kg_policies",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("doc", JSON, nullable=False),
)

_BATCH = 5000


def _batches(rows: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    for i in range(0, len(rows), _BATCH):
        yield rows[i : i + _BATCH]


def save(graph: CityGraph, engine: Engine, *, force: bool = False) -> int:
    """Replace the stored graph and policies with ``graph`` in one transaction.

    Raises :class:`StaleGraph` when the stored revision differs from ``graph.revision``
    (someone saved in between) unless ``force``. Returns the new revision (also set on
    ``graph.revision``)."""
    now = datetime.now(UTC)
    node_rows = [
        {
            "seq": i,
            "type": key.partition(":")[0],
            "node_id": key.partition(":")[2],
            "attrs": data or None,
        }
        for i, (key, data) in enumerate(graph.g.nodes(data=True))
    ]
    edge_rows = [
        {"seq": i, "type": k, "src": u, "dst": v, "attrs": data or None}
        for i, (u, v, k, data) in enumerate(graph.g.edges(keys=True, data=True))
    ]
    policy_rows = [
        {"id": p.id, "seq": i, "doc": p.model_dump(mode="json")}
        for i, p in enumerate(graph.policies.values())
    ]
    with engine.begin() as conn:
        # take the write lock first: bump the revision only if it is the expected one
        if force:
            stored = conn.execute(
                select(kg_meta.c.revision).where(kg_meta.c.name == GRAPH_NAME)
            ).scalar_one_or_none()
            expected = stored if stored is not None else 0
        else:
            expected = graph.revision
        new = expected + 1
        res = conn.execute(
            update(kg_meta)
            .where(kg_meta.c.name == GRAPH_NAME, kg_meta.c.revision == expected)
            .values(revision=new, saved_at=now, scene_threshold=graph.scene_threshold)
        )
        if res.rowcount == 0:
            stored = conn.execute(
                select(kg_meta.c.revision).where(kg_meta.c.name == GRAPH_NAME)
            ).scalar_one_or_none()
            if stored is not None or expected != 0:
                raise StaleGraph(
                    f"the stored graph is at revision {stored}, this one was loaded at "
                    f"revision {expected}: reload and apply the change again",
                    field="revision",
                )
            try:
                conn.execute(
                    insert(kg_meta).values(
                        name=GRAPH_NAME,
                        revision=new,
                        saved_at=now,
                        scene_threshold=graph.scene_threshold,
                    )
                )
            except IntegrityError:
                raise StaleGraph(
                    "the graph was first saved by someone else meanwhile: reload", field="revision"
                ) from None
        conn.execute(delete(kg_edges))
        conn.execute(delete(kg_nodes))
        conn.execute(delete(kg_policies))
        for batch in _batches(node_rows):
            conn.execute(insert(kg_nodes), batch)
        for batch in _batches(edge_rows):
            conn.execute(insert(kg_edges), batch)
        if policy_rows:
            conn.execute(insert(kg_policies), policy_rows)
    graph.revision = new
    return new


def load(engine: Engine) -> CityGraph:
    """The stored graph and its policies (an empty graph at revision 0 if none was
    saved). Every row is validated as it is added: unknown node types, edges breaking
    the ontology's rules, zone cycles or invalid policies raise :class:`GraphError`."""
    with engine.connect() as conn, conn.begin():
        meta = conn.execute(
            select(kg_meta.c.revision, kg_meta.c.scene_threshold).where(
                kg_meta.c.name == GRAPH_NAME
            )
        ).first()
        if meta is None:
            return CityGraph()
        nodes = conn.execute(
            select(kg_nodes.c.type, kg_nodes.c.node_id, kg_nodes.c.attrs).order_by(kg_nodes.c.seq)
        ).all()
        edges = conn.execute(
            select(kg_edges.c.type, kg_edges.c.src, kg_edges.c.dst, kg_edges.c.attrs).order_by(
                kg_edges.c.seq
            )
        ).all()
        policies = conn.execute(
            select(kg_policies.c.id, kg_policies.c.doc).order_by(kg_policies.c.seq)
        ).all()
    graph = CityGraph(scene_threshold=meta.scene_threshold)
    ntypes = {t.value: t for t in NodeType}
    etypes = {e.value: e for e in EdgeType}
    for t, node_id, attrs in nodes:
        ntype = ntypes.get(t)
        if ntype is None:
            raise GraphError(f"stored node {node_id!r} has unknown type {t!r}")
        graph.add_node(ntype, node_id, **(attrs or {}))
    for t, src, dst, attrs in edges:
        etype = etypes.get(t)
        if etype is None:
            raise GraphError(f"stored edge {src!r} -> {dst!r} has unknown type {t!r}")
        st, s = split_key(src)
        dt, d = split_key(dst)
        graph._load_edge(etype, st, s, dt, d, attrs or {})
    for pid, doc in policies:
        try:
            policy = Policy.model_validate(doc)
        except ValidationError as e:
            raise GraphError(f"stored policy {pid!r} is invalid: {e.errors()[0]['msg']}") from None
        graph.add_policy(policy)
    graph.revision = meta.revision
    return graph


def stored_revision(engine: Engine) -> int:
    """The revision of the stored graph (0 when none was saved)."""
    with engine.connect() as conn:
        rev = conn.execute(
            select(kg_meta.c.revision).where(kg_meta.c.name == GRAPH_NAME)
        ).scalar_one_or_none()
    return int(rev or 0)

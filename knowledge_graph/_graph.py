"""``CityGraph``: the typed city graph over a networkx ``MultiDiGraph`` with secondary
indexes kept in step with every mutation, so that applicability queries are lookups,
not traversals."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import networkx as nx

from edge_agent.protocol import Manifest, semver_key
from knowledge_graph._errors import (
    DuplicateNode,
    GraphError,
    InvalidEdge,
    PolicyError,
    UnknownNode,
    ZoneCycle,
)
from knowledge_graph._ontology import (
    EDGE_RULES,
    EdgeType,
    NodeType,
    OntologyDoc,
    SceneSource,
    check_edge_types,
    check_id,
    check_node_id,
    check_zone_path,
    seed_ontology,
)
from knowledge_graph._policy import Policy, zone_matches

if TYPE_CHECKING:
    from knowledge_graph._explain import Explanation

E = EdgeType
N = NodeType

#: a scene classifier: keyframes -> {scene name: confidence in [0, 1]}
SceneClassifier = Callable[[Sequence[Any]], Mapping[str, float]]

NodeRef = str | tuple[NodeType, str]


_PREFIX = {t: t.value + ":" for t in NodeType}
_NTYPE = {t.value: t for t in NodeType}
_ETYPE = {e.value: e for e in EdgeType}
_EKEY = {e: e.value for e in EdgeType}
_ALL_TYPES = frozenset(NodeType)
#: every allowed (edge type, source type, destination type)
_ALLOWED = {(e, a, b) for e, (srcs, dsts) in EDGE_RULES.items() for a in srcs for b in dsts}


def node_key(ntype: NodeType, node_id: str) -> str:
    """The networkx key of a node: ``"<type>:<id>"`` (ids are unique per type)."""
    return _PREFIX[ntype] + node_id


def split_key(key: str) -> tuple[NodeType, str]:
    t, _, i = key.partition(":")
    try:
        return _NTYPE[t], i
    except KeyError:
        raise GraphError(f"node key {key!r} has an unknown type {t!r}") from None


@dataclass(frozen=True, slots=True)
class Justification:
    """One path justifying an algorithm on a camera: camera → scene → event ← algorithm.

    ``event`` is ``None`` when the algorithm applies to the scene but none of what it
    detects is known to happen there (path camera → scene ← algorithm)."""

    camera: str
    scene: str
    event: str | None
    algorithm: str
    scene_source: str
    confidence: float
    confirmed: bool

    @property
    def path(self) -> tuple[str, ...]:
        cam, scn, alg = (
            node_key(N.CAMERA, self.camera),
            node_key(N.SCENE, self.scene),
            node_key(N.ALGORITHM, self.algorithm),
        )
        if self.event is None:
            return (cam, scn, alg)
        return (cam, scn, node_key(N.EVENT, self.event), alg)

    def sentence(self) -> str:
        how = (
            "set by the operator"
            if self.scene_source == SceneSource.OPERATOR.value
            else f"inferred, confidence {self.confidence:.2f}"
            + (", confirmed" if self.confirmed else "")
        )
        if self.event is None:
            return (
                f"camera {self.camera} sees {self.scene} ({how}); "
                f"{self.algorithm} applies to {self.scene}"
            )
        return (
            f"camera {self.camera} sees {self.scene} ({how}); {self.scene} may have "
            f"{self.event}; {self.algorithm} detects {self.event}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "camera": self.camera,
            "scene": self.scene,
            "event": self.event,
            "algorithm": self.algorithm,
            "scene_source": self.scene_source,
            "confidence": self.confidence,
            "confirmed": self.confirmed,
            "path": list(self.path),
        }


@dataclass(frozen=True, slots=True)
class Applicable:
    """An algorithm applicable to a camera, with every path that justifies it.

    ``hits`` are the raw (scene link, event or ``None``) pairs found by the index
    lookups; :attr:`justifications` turns them into :class:`Justification` objects on
    demand (so that a query returning hundreds of algorithms stays cheap)."""

    camera: str
    algorithm: str
    version: str
    hits: tuple[tuple[SceneLink, str | None], ...]

    @property
    def justifications(self) -> tuple[Justification, ...]:
        return tuple(
            Justification(
                self.camera,
                link.scene,
                ev,
                self.algorithm,
                link.source,
                link.confidence,
                link.confirmed,
            )
            for link, ev in self.hits
        )

    @property
    def scenes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(link.scene for link, _ in self.hits))

    @property
    def events(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(ev for _, ev in self.hits if ev))

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "version": self.version,
            "scenes": list(self.scenes),
            "events": list(self.events),
            "justifications": [j.to_dict() for j in self.justifications],
        }


@dataclass(frozen=True, slots=True)
class SceneLink:
    """A camera *sees* scene edge."""

    scene: str
    source: str
    confidence: float
    confirmed: bool
    rejected: bool

    def effective(self, threshold: float) -> bool:
        if self.rejected:
            return False
        return (
            self.source == SceneSource.OPERATOR.value
            or self.confirmed
            or self.confidence >= threshold
        )


def _add2(index: dict[str, dict[str, Any]], a: str, b: str, value: Any = None) -> None:
    index.setdefault(a, {})[b] = value


def _del2(index: dict[str, dict[str, Any]], a: str, b: str) -> None:
    inner = index.get(a)
    if inner is not None:
        inner.pop(b, None)
        if not inner:
            del index[a]


class CityGraph:
    """The knowledge graph of a city.

    Nodes are keyed ``"<type>:<id>"``; between two nodes there is at most one edge of
    each type (the multigraph key is the edge type). Every mutation goes through
    :meth:`add_node`, :meth:`remove_node`, :meth:`add_edge` or :meth:`remove_edge`,
    which keep the secondary indexes in step. ``scene_threshold`` is the confidence an
    inferred, unconfirmed scene needs to count.
    """

    def __init__(self, *, scene_threshold: float = 0.5) -> None:
        if not 0.0 <= scene_threshold <= 1.0:
            raise GraphError(f"scene_threshold must be in [0, 1], got {scene_threshold}")
        self.scene_threshold = scene_threshold
        self.g: nx.MultiDiGraph = nx.MultiDiGraph()
        self.policies: dict[str, Policy] = {}
        #: revision of the stored graph this one was loaded from (0: never stored)
        self.revision = 0
        # secondary indexes (dicts keep insertion order, so outputs are deterministic)
        self._by_type: dict[NodeType, dict[str, None]] = {t: {} for t in NodeType}
        self._scene_algos: dict[str, dict[str, None]] = {}
        self._algo_scenes: dict[str, dict[str, None]] = {}
        self._detect_algos: dict[str, dict[str, None]] = {}
        self._algo_detects: dict[str, dict[str, None]] = {}
        self._scene_events: dict[str, dict[str, None]] = {}
        self._event_objects: dict[str, dict[str, None]] = {}
        self._camera_scenes: dict[str, dict[str, SceneLink]] = {}
        self._camera_zone: dict[str, str] = {}
        self._zone_cameras: dict[str, dict[str, None]] = {}
        self._zone_parents: dict[str, dict[str, None]] = {}
        self._zone_children: dict[str, dict[str, None]] = {}
        self._device_cameras: dict[str, dict[str, None]] = {}
        self._camera_devices: dict[str, dict[str, None]] = {}
        self._device_target: dict[str, str] = {}
        self._algo_cost: dict[str, dict[str, dict[str, float]]] = {}

    # ------------------------------------------------------------------ nodes

    def has(self, ntype: NodeType, node_id: str) -> bool:
        return node_id in self._by_type[ntype]

    def nodes(self, ntype: NodeType) -> list[str]:
        """Ids of the nodes of one type, in insertion order."""
        return list(self._by_type[ntype])

    def node(self, ntype: NodeType, node_id: str) -> dict[str, Any]:
        """The attributes of a node (a copy)."""
        self._need(ntype, node_id)
        return dict(self.g.nodes[node_key(ntype, node_id)])

    def count(self, ntype: NodeType) -> int:
        return len(self._by_type[ntype])

    def add_node(self, ntype: NodeType, node_id: str, **attrs: Any) -> None:
        """Add a node; an id already used by a node of the same type is an error."""
        if ntype.__class__ is not NodeType:
            ntype = NodeType(ntype)
        check_node_id(ntype, node_id)
        if node_id in self._by_type[ntype]:
            raise DuplicateNode(f"{ntype.value} {node_id!r} already exists", field=ntype.value)
        self.g.add_node(node_key(ntype, node_id), **attrs)
        self._by_type[ntype][node_id] = None

    def ensure_node(self, ntype: NodeType, node_id: str, **attrs: Any) -> bool:
        """Add a node unless it exists (existing attributes are kept); True if added."""
        if self.has(ntype, node_id):
            return False
        self.add_node(ntype, node_id, **attrs)
        return True

    def update_node(self, ntype: NodeType, node_id: str, **attrs: Any) -> None:
        self._need(ntype, node_id)
        self.g.nodes[node_key(ntype, node_id)].update(attrs)

    def remove_node(self, ntype: NodeType, node_id: str) -> None:
        """Remove a node and every edge touching it (indexes follow)."""
        self._need(ntype, node_id)
        users = self._policies_naming(ntype, node_id)
        if users:
            raise GraphError(
                f"{ntype.value} {node_id!r} is named by policies {users}; remove or change "
                "them first",
                field=ntype.value,
            )
        key = node_key(ntype, node_id)
        for u, v, k in list(self.g.out_edges(key, keys=True)) + list(
            self.g.in_edges(key, keys=True)
        ):
            self._remove_edge_keys(EdgeType(k), u, v)
        self.g.remove_node(key)
        del self._by_type[ntype][node_id]

    def _policies_naming(self, ntype: NodeType, node_id: str) -> list[str]:
        out = []
        for p in self.policies.values():
            names: set[str] = set()
            if ntype in (N.EVENT, N.OBJECT):
                names.update(p.events)
            elif ntype is N.CAMERA:
                names.update(x.camera for x in p.pins)
                names.update(x.camera for x in p.exclusions if x.camera)
            elif ntype is N.ALGORITHM:
                names.update(x.algorithm for x in p.pins)
                names.update(x.algorithm for x in p.exclusions)
            elif ntype is N.DEVICE:
                names.update(x.device for x in p.exclusions if x.device)
            if node_id in names:
                out.append(p.id)
        return out

    def _need(self, ntype: NodeType, node_id: str, field: str | None = None) -> str:
        if node_id not in self._by_type[ntype]:
            raise UnknownNode(f"unknown {ntype.value} {node_id!r}", field=field or ntype.value)
        return node_key(ntype, node_id)

    # ------------------------------------------------------------------ edges

    def _resolve(self, ref: NodeRef, allowed: frozenset[NodeType], role: str) -> NodeType:
        if isinstance(ref, tuple):
            ntype, node_id = NodeType(ref[0]), ref[1]
            self._need(ntype, node_id, field=role)
            return ntype
        found = [t for t in sorted(allowed, key=lambda t: t.value) if self.has(t, ref)]
        if not found:
            kinds = "|".join(sorted(t.value for t in allowed))
            raise UnknownNode(f"unknown {kinds} {ref!r} ({role} of the edge)", field=role)
        return found[0]

    def add_edge(self, etype: EdgeType, src: NodeRef, dst: NodeRef, **attrs: Any) -> None:
        """Add (or update the attributes of) a typed edge.

        ``src``/``dst`` are ids (their type is looked up among those the edge type
        allows) or ``(NodeType, id)`` pairs (checked against the edge type)."""
        etype = EdgeType(etype)
        srcs, dsts = EDGE_RULES[etype]
        st = self._resolve(src, srcs if not isinstance(src, tuple) else _ALL_TYPES, "source")
        dt = self._resolve(dst, dsts if not isinstance(dst, tuple) else _ALL_TYPES, "target")
        check_edge_types(etype, st, dt)
        s_id = src[1] if isinstance(src, tuple) else src
        d_id = dst[1] if isinstance(dst, tuple) else dst
        self._add_edge_typed(etype, st, s_id, dt, d_id, attrs)

    def _add_edge_typed(
        self,
        etype: EdgeType,
        st: NodeType,
        s: str,
        dt: NodeType,
        d: str,
        attrs: dict[str, Any],
    ) -> None:
        u, v = node_key(st, s), node_key(dt, d)
        if etype is E.PART_OF:
            self._check_no_zone_cycle(s, d)
        elif etype is E.IN_ZONE:
            old = self._camera_zone.get(s)
            if old is not None and old != d:
                raise InvalidEdge(
                    f"camera {s!r} is already in zone {old!r}; move it with set_camera_zone",
                    field="zone",
                )
        elif etype is E.HAS_TARGET:
            old = self._device_target.get(s)
            if old is not None and old != d:
                raise InvalidEdge(f"device {s!r} already has target {old!r}", field="target")
        elif etype is E.SEES:
            attrs = self._scene_attrs(attrs)
        elif etype is E.RUNS_ON:
            attrs = self._cost_attrs(s, d, attrs)
        k = _EKEY[etype]
        existing = self.g._succ[u].get(v, {}).get(k)
        if existing is not None:
            existing.update(attrs)
        else:
            self.g.add_edge(u, v, key=k, **attrs)
            existing = self.g._succ[u][v][k]
        self._index_add(etype, s, d, existing)

    def _load_edge(
        self, etype: EdgeType, st: NodeType, s: str, dt: NodeType, d: str, attrs: dict[str, Any]
    ) -> None:
        """Add an edge read from storage: existence and type rules checked, no lookups
        by bare id."""
        if s not in self._by_type[st]:
            raise UnknownNode(f"edge {etype.value} names unknown {st.value} {s!r}", field="source")
        if d not in self._by_type[dt]:
            raise UnknownNode(f"edge {etype.value} names unknown {dt.value} {d!r}", field="target")
        if (etype, st, dt) not in _ALLOWED:
            check_edge_types(etype, st, dt)
        self._add_edge_typed(etype, st, s, dt, d, attrs)

    def remove_edge(self, etype: EdgeType, src: NodeRef, dst: NodeRef) -> None:
        etype = EdgeType(etype)
        srcs, dsts = EDGE_RULES[etype]
        st = self._resolve(src, srcs, "source") if not isinstance(src, tuple) else src[0]
        dt = self._resolve(dst, dsts, "target") if not isinstance(dst, tuple) else dst[0]
        s_id = src[1] if isinstance(src, tuple) else src
        d_id = dst[1] if isinstance(dst, tuple) else dst
        u, v = node_key(NodeType(st), s_id), node_key(NodeType(dt), d_id)
        if not self.g.has_edge(u, v, key=etype.value):
            raise UnknownNode(f"no {etype.value} edge {s_id!r} -> {d_id!r}", field="edge")
        self._remove_edge_keys(etype, u, v)

    def has_edge(self, etype: EdgeType, src: NodeRef, dst: NodeRef) -> bool:
        srcs, dsts = EDGE_RULES[EdgeType(etype)]
        for ref, allowed, _role in ((src, srcs, "s"), (dst, dsts, "d")):
            if isinstance(ref, tuple):
                if not self.has(*ref):
                    return False
            elif not any(self.has(t, ref) for t in allowed):
                return False
        st = src[0] if isinstance(src, tuple) else self._resolve(src, srcs, "source")
        dt = dst[0] if isinstance(dst, tuple) else self._resolve(dst, dsts, "target")
        s_id = src[1] if isinstance(src, tuple) else src
        d_id = dst[1] if isinstance(dst, tuple) else dst
        return self.g.has_edge(node_key(st, s_id), node_key(dt, d_id), key=EdgeType(etype).value)

    def edges(self, etype: EdgeType | None = None) -> list[tuple[str, str, str, dict[str, Any]]]:
        """``(type, source key, destination key, attributes)`` of every edge (of a type)."""
        return [
            (k, u, v, dict(d))
            for u, v, k, d in self.g.edges(keys=True, data=True)
            if etype is None or k == EdgeType(etype).value
        ]

    def _remove_edge_keys(self, etype: EdgeType, u: str, v: str) -> None:
        self.g.remove_edge(u, v, key=etype.value)
        self._index_remove(etype, split_key(u)[1], split_key(v)[1])

    @staticmethod
    def _scene_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
        source = SceneSource(attrs.get("source", SceneSource.OPERATOR.value)).value
        conf = float(attrs.get("confidence", 1.0))
        if not 0.0 <= conf <= 1.0:
            raise InvalidEdge(f"scene confidence must be in [0, 1], got {conf}", field="confidence")
        return {
            "source": source,
            "confidence": conf,
            "confirmed": bool(attrs.get("confirmed", source == SceneSource.OPERATOR.value)),
            "rejected": bool(attrs.get("rejected", False)),
        }

    @staticmethod
    def _cost_attrs(algo: str, target: str, attrs: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("ms_per_frame", "mem_mb"):
            val = attrs.get(name)
            if isinstance(val, bool) or not isinstance(val, int | float):
                raise InvalidEdge(
                    f"cost of {algo!r} on {target!r} needs a number {name}", field=name
                )
            if not (val > 0 and math.isfinite(val)):
                raise InvalidEdge(
                    f"cost of {algo!r} on {target!r}: {name} must be > 0, got {val}", field=name
                )
            out[name] = attrs[name]
        return out

    def _check_no_zone_cycle(self, child: str, parent: str) -> None:
        if child == parent:
            raise ZoneCycle(f"zone {child!r} cannot be part of itself", field="zone")
        # a cycle appears if ``child`` is already an ancestor of ``parent``
        stack, seen = [parent], {parent}
        while stack:
            z = stack.pop()
            for p in self._zone_parents.get(z, ()):
                if p == child:
                    raise ZoneCycle(
                        f"zone {child!r} part of {parent!r} would close a cycle "
                        f"({parent!r} is already inside {child!r})",
                        field="zone",
                    )
                if p not in seen:
                    seen.add(p)
                    stack.append(p)

    def _index_add(self, etype: EdgeType, s: str, d: str, data: dict[str, Any]) -> None:
        if etype is E.APPLIES_TO:
            _add2(self._scene_algos, d, s)
            _add2(self._algo_scenes, s, d)
        elif etype is E.DETECTS:
            _add2(self._detect_algos, d, s)
            _add2(self._algo_detects, s, d)
        elif etype is E.MAY_HAVE:
            _add2(self._scene_events, s, d)
        elif etype is E.INVOLVES:
            _add2(self._event_objects, s, d)
        elif etype is E.SEES:
            _add2(
                self._camera_scenes,
                s,
                d,
                SceneLink(
                    d, data["source"], data["confidence"], data["confirmed"], data["rejected"]
                ),
            )
        elif etype is E.IN_ZONE:
            self._camera_zone[s] = d
            _add2(self._zone_cameras, d, s)
        elif etype is E.PART_OF:
            _add2(self._zone_parents, s, d)
            _add2(self._zone_children, d, s)
        elif etype is E.REACHES:
            _add2(self._device_cameras, s, d)
            _add2(self._camera_devices, d, s)
        elif etype is E.HAS_TARGET:
            self._device_target[s] = d
        elif etype is E.RUNS_ON:
            self._algo_cost.setdefault(s, {})[d] = {
                "ms_per_frame": data["ms_per_frame"],
                "mem_mb": data["mem_mb"],
            }

    def _index_remove(self, etype: EdgeType, s: str, d: str) -> None:
        if etype is E.APPLIES_TO:
            _del2(self._scene_algos, d, s)
            _del2(self._algo_scenes, s, d)
        elif etype is E.DETECTS:
            _del2(self._detect_algos, d, s)
            _del2(self._algo_detects, s, d)
        elif etype is E.MAY_HAVE:
            _del2(self._scene_events, s, d)
        elif etype is E.INVOLVES:
            _del2(self._event_objects, s, d)
        elif etype is E.SEES:
            _del2(self._camera_scenes, s, d)
        elif etype is E.IN_ZONE:
            self._camera_zone.pop(s, None)
            _del2(self._zone_cameras, d, s)
        elif etype is E.PART_OF:
            _del2(self._zone_parents, s, d)
            _del2(self._zone_children, d, s)
        elif etype is E.REACHES:
            _del2(self._device_cameras, s, d)
            _del2(self._camera_devices, d, s)
        elif etype is E.HAS_TARGET:
            self._device_target.pop(s, None)
        elif etype is E.RUNS_ON:
            _del2(self._algo_cost, s, d)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ ontology

    def add_object(self, name: str, description: str = "") -> None:
        self.add_node(N.OBJECT, name, description=description)

    def add_event(
        self,
        name: str,
        *,
        involves: Iterable[str] = (),
        scenes: Iterable[str] = (),
        description: str = "",
    ) -> None:
        """A new event type; ``involves`` objects and ``scenes`` where it may happen must
        exist."""
        involves, scenes = list(involves), list(scenes)
        for o in involves:
            self._need(N.OBJECT, o, field="involves")
        for s in scenes:
            self._need(N.SCENE, s, field="scenes")
        self.add_node(N.EVENT, name, description=description)
        for o in involves:
            self._add_edge_typed(E.INVOLVES, N.EVENT, name, N.OBJECT, o, {})
        for s in scenes:
            self._add_edge_typed(E.MAY_HAVE, N.SCENE, s, N.EVENT, name, {"source": "operator"})

    def add_scene(self, name: str, *, may_have: Iterable[str] = (), description: str = "") -> None:
        """A new scene type; the events that ``may_have`` there must exist."""
        may_have = list(may_have)
        for e in may_have:
            self._need(N.EVENT, e, field="may_have")
        self.add_node(N.SCENE, name, description=description)
        for e in may_have:
            self._add_edge_typed(E.MAY_HAVE, N.SCENE, name, N.EVENT, e, {"source": "operator"})

    def add_target(self, name: str) -> None:
        self.add_node(N.TARGET, name)

    def merge_ontology(self, doc: OntologyDoc, *, source: str = "operator") -> dict[str, int]:
        """Add what ``doc`` defines and the graph lacks (existing nodes are kept as they
        are, edges are added). Validated first: nothing is added when a reference is
        unknown. Returns how many nodes and edges were added."""
        known_objects = set(doc.objects) | set(self._by_type[N.OBJECT])
        known_events = set(doc.events) | set(self._by_type[N.EVENT])
        for ev, spec in doc.events.items():
            check_id(ev, "event id")
            for o in spec.involves:
                if o not in known_objects:
                    raise UnknownNode(
                        f"event {ev!r} involves unknown object {o!r}", field=f"events.{ev}.involves"
                    )
        for sc, sspec in doc.scenes.items():
            check_id(sc, "scene id")
            for ev in sspec.may_have:
                if ev not in known_events:
                    raise UnknownNode(
                        f"scene {sc!r} may have unknown event {ev!r}", field=f"scenes.{sc}.may_have"
                    )
        for o in doc.objects:
            check_id(o, "object id")
        for t in doc.targets:
            check_id(t, "target id")
        added = {"nodes": 0, "edges": 0}
        for o, desc in doc.objects.items():
            added["nodes"] += self.ensure_node(N.OBJECT, o, description=desc, source=source)
        for ev, spec in doc.events.items():
            added["nodes"] += self.ensure_node(
                N.EVENT, ev, description=spec.description, source=source
            )
            for o in spec.involves:
                added["edges"] += self._ensure_edge(E.INVOLVES, N.EVENT, ev, N.OBJECT, o, {})
        for sc, sspec in doc.scenes.items():
            added["nodes"] += self.ensure_node(
                N.SCENE, sc, description=sspec.description, source=source
            )
            for ev in sspec.may_have:
                added["edges"] += self._ensure_edge(
                    E.MAY_HAVE, N.SCENE, sc, N.EVENT, ev, {"source": source}
                )
        for t in doc.targets:
            added["nodes"] += self.ensure_node(N.TARGET, t, source=source)
        return added

    def seed(self) -> dict[str, int]:
        """Merge the seed ontology shipped with the package."""
        return self.merge_ontology(seed_ontology(), source="seed")

    def _ensure_edge(
        self, etype: EdgeType, st: NodeType, s: str, dt: NodeType, d: str, attrs: dict[str, Any]
    ) -> int:
        if self.g.has_edge(node_key(st, s), node_key(dt, d), key=etype.value):
            return 0
        self._add_edge_typed(etype, st, s, dt, d, attrs)
        return 1

    # ------------------------------------------------------------------ zones, cameras

    def add_zone(self, path: str) -> str:
        """Add a zone path and its ancestors (``a``, ``a/b``, ``a/b/c``), each part of
        its parent. Existing zones are kept."""
        check_zone_path(path)
        parts = path.split("/")
        parent: str | None = None
        for i in range(1, len(parts) + 1):
            z = "/".join(parts[:i])
            self.ensure_node(N.ZONE, z)
            if parent is not None:
                self._ensure_edge(E.PART_OF, N.ZONE, z, N.ZONE, parent, {})
            parent = z
        return path

    def zone_of(self, camera: str) -> str | None:
        self._need(N.CAMERA, camera)
        return self._camera_zone.get(camera)

    def cameras_in_zone(self, zone: str, *, recursive: bool = True) -> list[str]:
        self._need(N.ZONE, zone)
        out = list(self._zone_cameras.get(zone, ()))
        if recursive:
            stack, seen = [zone], {zone}
            while stack:
                z = stack.pop()
                for c in self._zone_children.get(z, ()):
                    if c not in seen:
                        seen.add(c)
                        stack.append(c)
                        out.extend(self._zone_cameras.get(c, ()))
        return out

    def zone_parents(self, zone: str) -> list[str]:
        self._need(N.ZONE, zone)
        return list(self._zone_parents.get(zone, ()))

    def add_camera(
        self,
        camera: str,
        *,
        zone: str,
        scenes: Iterable[str] = (),
        **attrs: Any,
    ) -> None:
        """A camera in ``zone`` (created with its ancestors if new) seeing ``scenes``
        (set by the operator; each must exist)."""
        scenes = list(dict.fromkeys(scenes))
        check_id(camera, "camera id")
        if self.has(N.CAMERA, camera):
            raise DuplicateNode(f"camera {camera!r} already exists", field="camera")
        check_zone_path(zone)
        for s in scenes:
            self._need(N.SCENE, s, field="scene")
        self.add_zone(zone)
        self.add_node(N.CAMERA, camera, **attrs)
        self._add_edge_typed(E.IN_ZONE, N.CAMERA, camera, N.ZONE, zone, {})
        for s in scenes:
            self._add_edge_typed(E.SEES, N.CAMERA, camera, N.SCENE, s, {"source": "operator"})

    def set_camera_zone(self, camera: str, zone: str) -> None:
        self._need(N.CAMERA, camera)
        self.add_zone(zone)
        old = self._camera_zone.get(camera)
        if old is not None:
            self._remove_edge_keys(E.IN_ZONE, node_key(N.CAMERA, camera), node_key(N.ZONE, old))
        self._add_edge_typed(E.IN_ZONE, N.CAMERA, camera, N.ZONE, zone, {})

    def scene_links(self, camera: str) -> list[SceneLink]:
        """Every *sees* edge of a camera (operator, inferred, rejected)."""
        self._need(N.CAMERA, camera)
        return list(self._camera_scenes.get(camera, {}).values())

    def camera_scenes(self, camera: str) -> list[str]:
        """The scenes that count for a camera: operator-set, confirmed, or inferred with
        a confidence at or above ``scene_threshold``; never rejected ones."""
        self._need(N.CAMERA, camera)
        th = self.scene_threshold
        return [s for s, link in self._camera_scenes.get(camera, {}).items() if link.effective(th)]

    def set_camera_scenes(self, camera: str, scenes: Iterable[str]) -> None:
        """The operator states the camera's scenes: these become operator scenes (an
        inferred one listed is confirmed); other operator scenes are removed; other
        inferred scenes are kept but marked rejected (so re-inference does not bring
        them back)."""
        self._need(N.CAMERA, camera)
        scenes = list(dict.fromkeys(scenes))
        for s in scenes:
            self._need(N.SCENE, s, field="scene")
        ckey = node_key(N.CAMERA, camera)
        for s, link in list(self._camera_scenes.get(camera, {}).items()):
            if s in scenes:
                continue
            if link.source == SceneSource.OPERATOR.value:
                self._remove_edge_keys(E.SEES, ckey, node_key(N.SCENE, s))
            else:
                self._add_edge_typed(
                    E.SEES, N.CAMERA, camera, N.SCENE, s, {**_link_attrs(link), "rejected": True}
                )
        for s in scenes:
            link = self._camera_scenes.get(camera, {}).get(s)
            if link is None:
                attrs = {"source": "operator"}
            else:
                attrs = {**_link_attrs(link), "confirmed": True, "rejected": False}
            self._add_edge_typed(E.SEES, N.CAMERA, camera, N.SCENE, s, attrs)

    def confirm_scene(self, camera: str, scene: str) -> None:
        """The operator confirms an inferred scene (it then counts whatever its confidence)."""
        link = self._link(camera, scene)
        self._add_edge_typed(
            E.SEES,
            N.CAMERA,
            camera,
            N.SCENE,
            scene,
            {**_link_attrs(link), "confirmed": True, "rejected": False},
        )

    def reject_scene(self, camera: str, scene: str) -> None:
        """The operator overrides a scene: it stops counting; kept (marked rejected) so
        that inference does not bring it back."""
        link = self._link(camera, scene)
        self._add_edge_typed(
            E.SEES,
            N.CAMERA,
            camera,
            N.SCENE,
            scene,
            {**_link_attrs(link), "confirmed": False, "rejected": True},
        )

    def _link(self, camera: str, scene: str) -> SceneLink:
        self._need(N.CAMERA, camera)
        self._need(N.SCENE, scene, field="scene")
        link = self._camera_scenes.get(camera, {}).get(scene)
        if link is None:
            raise UnknownNode(f"camera {camera!r} has no scene {scene!r}", field="scene")
        return link

    def record_inferred_scenes(self, camera: str, scores: Mapping[str, float]) -> list[str]:
        """Record a scene classifier's output for a camera: each known scene gets an
        *inferred* edge with its confidence. Operator scenes, confirmed scenes and
        rejected scenes are left as they are. Unknown scene names are an error (nothing
        recorded). Returns the scenes recorded."""
        self._need(N.CAMERA, camera)
        for s, conf in scores.items():
            self._need(N.SCENE, s, field="scene")
            if not isinstance(conf, int | float) or not 0.0 <= float(conf) <= 1.0:
                raise InvalidEdge(
                    f"confidence of scene {s!r} must be in [0, 1], got {conf!r}", field="confidence"
                )
        recorded = []
        for s, conf in scores.items():
            link = self._camera_scenes.get(camera, {}).get(s)
            if link is not None and (
                link.source == SceneSource.OPERATOR.value or link.confirmed or link.rejected
            ):
                continue
            self._add_edge_typed(
                E.SEES,
                N.CAMERA,
                camera,
                N.SCENE,
                s,
                {"source": "inferred", "confidence": float(conf), "confirmed": False},
            )
            recorded.append(s)
        return recorded

    def infer_scenes(
        self, camera: str, keyframes: Sequence[Any], classifier: SceneClassifier
    ) -> list[str]:
        """Run a scene classifier (e.g. one from the store) on a camera's keyframes and
        record its output (:meth:`record_inferred_scenes`)."""
        self._need(N.CAMERA, camera)
        if not keyframes:
            raise GraphError(f"no keyframes given for camera {camera!r}", field="keyframes")
        return self.record_inferred_scenes(camera, dict(classifier(keyframes)))

    # ------------------------------------------------------------------ devices

    def add_device(
        self,
        device: str,
        *,
        target: str,
        ms_per_s: float,
        mem_mb: float,
        streams: int,
        reaches: Iterable[str] = (),
        **attrs: Any,
    ) -> None:
        """An edge device of hardware ``target`` (created if new) with its capacity,
        reaching ``reaches`` cameras (each must exist)."""
        check_id(device, "device id")
        check_id(target, "target id")
        if self.has(N.DEVICE, device):
            raise DuplicateNode(f"device {device!r} already exists", field="device")
        cap = _capacity(device, ms_per_s, mem_mb, streams)
        reaches = list(dict.fromkeys(reaches))
        for c in reaches:
            self._need(N.CAMERA, c, field="reaches")
        self.ensure_node(N.TARGET, target)
        self.add_node(N.DEVICE, device, capacity=cap, **attrs)
        self._add_edge_typed(E.HAS_TARGET, N.DEVICE, device, N.TARGET, target, {})
        for c in reaches:
            self._add_edge_typed(E.REACHES, N.DEVICE, device, N.CAMERA, c, {})

    def set_device_capacity(
        self, device: str, *, ms_per_s: float, mem_mb: float, streams: int
    ) -> None:
        self._need(N.DEVICE, device)
        self.update_node(N.DEVICE, device, capacity=_capacity(device, ms_per_s, mem_mb, streams))

    def device_target(self, device: str) -> str | None:
        self._need(N.DEVICE, device)
        return self._device_target.get(device)

    def device_cameras(self, device: str) -> list[str]:
        self._need(N.DEVICE, device)
        return list(self._device_cameras.get(device, ()))

    def camera_devices(self, camera: str) -> list[str]:
        self._need(N.CAMERA, camera)
        return list(self._camera_devices.get(camera, ()))

    # ------------------------------------------------------------------ algorithms

    def add_algorithm(
        self,
        algorithm: str,
        *,
        version: str,
        detects: Iterable[str],
        scenes: Iterable[str],
        fps: float,
        cost: Mapping[str, Mapping[str, float]],
        create_missing: bool = False,
        **attrs: Any,
    ) -> list[str]:
        """Add an algorithm version, or update it when ``version`` is newer than the one
        known (an older version is only recorded in ``versions``).

        ``detects`` are event or object names, ``scenes`` scene names; unknown ones are
        an error unless ``create_missing`` (then they are created with
        ``source="algorithm"`` and listed in the return value). Each detected event is
        recorded as possible in each scene (``may_have``, ``source="algorithm"``) so that
        the justification path camera → scene → event ← algorithm exists."""
        check_id(algorithm, "algorithm id")
        try:
            semver_key(version)
        except ValueError as e:
            raise GraphError(f"algorithm {algorithm!r}: {e}", field="version") from None
        detects, scenes = list(dict.fromkeys(detects)), list(dict.fromkeys(scenes))
        if not isinstance(fps, int | float) or not (fps > 0 and math.isfinite(fps)):
            raise GraphError(f"algorithm {algorithm!r}: fps must be > 0, got {fps!r}", field="fps")
        for t, c in cost.items():
            check_id(t, "target id")
            self._cost_attrs(algorithm, t, dict(c))
        missing: list[tuple[NodeType, str]] = []
        for d in detects:
            check_id(d, "event id")
            if not self.has(N.EVENT, d) and not self.has(N.OBJECT, d):
                missing.append((N.EVENT, d))
        for s in scenes:
            check_id(s, "scene id")
            if not self.has(N.SCENE, s):
                missing.append((N.SCENE, s))
        if missing and not create_missing:
            t, name = missing[0]
            raise UnknownNode(
                f"algorithm {algorithm!r} names unknown {t.value} {name!r} "
                f"({'detects' if t is N.EVENT else 'scenes'}); add it to the ontology first",
                field="detects" if t is N.EVENT else "scenes",
            )
        if self.has(N.ALGORITHM, algorithm):
            current = self.g.nodes[node_key(N.ALGORITHM, algorithm)]
            versions = list(current.get("versions", [current["version"]]))
            if version not in versions:
                versions.append(version)
                versions.sort(key=semver_key)
            if semver_key(version) < semver_key(current["version"]):
                current["versions"] = versions
                return []
            self._drop_algorithm_edges(algorithm)
            current.update(version=version, versions=versions, fps=fps, **attrs)
        else:
            self.add_node(
                N.ALGORITHM, algorithm, version=version, versions=[version], fps=fps, **attrs
            )
        created = []
        for t, name in missing:
            self.ensure_node(t, name, source="algorithm")
            created.append(f"{t.value}:{name}")
        for s in scenes:
            self._add_edge_typed(E.APPLIES_TO, N.ALGORITHM, algorithm, N.SCENE, s, {})
        for d in detects:
            dt = N.EVENT if self.has(N.EVENT, d) else N.OBJECT
            self._add_edge_typed(E.DETECTS, N.ALGORITHM, algorithm, dt, d, {})
            if dt is N.EVENT:
                for s in scenes:
                    self._ensure_edge(E.MAY_HAVE, N.SCENE, s, N.EVENT, d, {"source": "algorithm"})
        for t, c in cost.items():
            self.ensure_node(N.TARGET, t)
            self._add_edge_typed(E.RUNS_ON, N.ALGORITHM, algorithm, N.TARGET, t, dict(c))
        return created

    def add_algorithm_from_manifest(
        self, manifest: Manifest, *, create_missing: bool = True
    ) -> list[str]:
        """Enter an algorithm from its store manifest (id, version, scenes, detects, fps,
        cost per target). Returns the scene/event nodes it had to create."""
        return self.add_algorithm(
            manifest.id,
            version=manifest.version,
            detects=manifest.detects,
            scenes=manifest.scenes,
            fps=manifest.fps,
            cost={
                t: {"ms_per_frame": c.ms_per_frame, "mem_mb": c.mem_mb}
                for t, c in manifest.cost.items()
            },
            create_missing=create_missing,
            name=manifest.name,
        )

    def _drop_algorithm_edges(self, algorithm: str) -> None:
        key = node_key(N.ALGORITHM, algorithm)
        for u, v, k in list(self.g.out_edges(key, keys=True)):
            self._remove_edge_keys(EdgeType(k), u, v)

    def algorithm_scenes(self, algorithm: str) -> list[str]:
        self._need(N.ALGORITHM, algorithm)
        return list(self._algo_scenes.get(algorithm, ()))

    def algorithm_detects(self, algorithm: str) -> list[str]:
        self._need(N.ALGORITHM, algorithm)
        return list(self._algo_detects.get(algorithm, ()))

    def algorithm_cost(self, algorithm: str) -> dict[str, dict[str, float]]:
        self._need(N.ALGORITHM, algorithm)
        return {t: dict(c) for t, c in self._algo_cost.get(algorithm, {}).items()}

    def algorithms_for_scene(self, scene: str) -> list[str]:
        self._need(N.SCENE, scene)
        return list(self._scene_algos.get(scene, ()))

    def algorithms_detecting(self, name: str) -> list[str]:
        return list(self._detect_algos.get(name, ()))

    def scene_events(self, scene: str) -> list[str]:
        self._need(N.SCENE, scene)
        return list(self._scene_events.get(scene, ()))

    def event_objects(self, event: str) -> list[str]:
        self._need(N.EVENT, event)
        return list(self._event_objects.get(event, ()))

    # ------------------------------------------------------------------ reasoning

    def applicable(self, camera: str) -> list[Applicable]:
        """Algorithms whose scenes meet the camera's (counting) scenes, each with the
        paths camera → scene → event ← algorithm justifying it. Index lookups only:
        O(camera scenes × algorithms per scene × events per algorithm)."""
        if camera not in self._by_type[N.CAMERA]:
            raise UnknownNode(f"unknown camera {camera!r}", field="camera")
        th = self.scene_threshold
        found: dict[str, list[tuple[SceneLink, str | None]]] = {}
        scene_algos, algo_detects, scene_events = (
            self._scene_algos,
            self._algo_detects,
            self._scene_events,
        )
        for scene, link in self._camera_scenes.get(camera, {}).items():
            if not link.effective(th):
                continue
            events_here = scene_events.get(scene, {})
            for algo in scene_algos.get(scene, ()):
                hits = found.get(algo)
                if hits is None:
                    hits = found[algo] = []
                n = len(hits)
                for ev in algo_detects.get(algo, ()):
                    if ev in events_here:
                        hits.append((link, ev))
                if len(hits) == n:
                    hits.append((link, None))
        nodes = self.g._node
        return [
            Applicable(camera, a, nodes["algorithm:" + a]["version"], tuple(h))
            for a, h in found.items()
        ]

    def applicable_to(self, camera: str, algorithm: str) -> Applicable | None:
        """:meth:`applicable` for one algorithm (``None`` when it is not applicable)."""
        self._need(N.CAMERA, camera)
        self._need(N.ALGORITHM, algorithm)
        th = self.scene_threshold
        detects = self._algo_detects.get(algorithm, {})
        hits: list[tuple[SceneLink, str | None]] = []
        for scene, link in self._camera_scenes.get(camera, {}).items():
            if not link.effective(th) or algorithm not in self._scene_algos.get(scene, ()):
                continue
            events_here = self._scene_events.get(scene, {})
            n = len(hits)
            hits.extend((link, ev) for ev in detects if ev in events_here)
            if len(hits) == n:
                hits.append((link, None))
        if not hits:
            return None
        version = self.g._node[node_key(N.ALGORITHM, algorithm)]["version"]
        return Applicable(camera, algorithm, version, tuple(hits))

    def zone_view(self, zone: str) -> list[dict[str, Any]]:
        """The cameras under a zone with their scene links, devices and applicable
        algorithms (for a console's zone view)."""
        return [
            {
                "camera": c,
                "zone": self._camera_zone.get(c),
                "scenes": [
                    {
                        "scene": link.scene,
                        "source": link.source,
                        "confidence": link.confidence,
                        "confirmed": link.confirmed,
                        "rejected": link.rejected,
                        "counts": link.effective(self.scene_threshold),
                    }
                    for link in self._camera_scenes.get(c, {}).values()
                ],
                "devices": list(self._camera_devices.get(c, ())),
                "algorithms": [a.algorithm for a in self.applicable(c)],
            }
            for c in self.cameras_in_zone(zone)
        ]

    def applicable_bruteforce(self, camera: str) -> dict[str, set[tuple[str, str | None]]]:
        """The same question answered by walking the networkx graph (no indexes): for
        tests. ``{algorithm: {(scene, event or None)}}``."""
        ckey = self._need(N.CAMERA, camera)
        out: dict[str, set[tuple[str, str | None]]] = {}
        for _, skey, k, data in self.g.out_edges(ckey, keys=True, data=True):
            if k != E.SEES.value:
                continue
            link = SceneLink(
                skey, data["source"], data["confidence"], data["confirmed"], data["rejected"]
            )
            if not link.effective(self.scene_threshold):
                continue
            scene_events = {
                v for _, v, kk in self.g.out_edges(skey, keys=True) if kk == E.MAY_HAVE.value
            }
            for akey, _, kk in self.g.in_edges(skey, keys=True):
                if kk != E.APPLIES_TO.value:
                    continue
                detected = [
                    v for _, v, k3 in self.g.out_edges(akey, keys=True) if k3 == E.DETECTS.value
                ]
                hits = [v for v in detected if v in scene_events]
                algo = split_key(akey)[1]
                scene = split_key(skey)[1]
                acc = out.setdefault(algo, set())
                if hits:
                    acc.update((scene, split_key(v)[1]) for v in hits)
                else:
                    acc.add((scene, None))
        return out

    def explain(
        self,
        camera: str,
        algorithm: str,
        *,
        placement: Mapping[str, Any] | None = None,
        at: datetime | None = None,
        policies: list[Policy] | None = None,
    ) -> Explanation:
        """Why ``algorithm`` is or is not applicable to / placed on ``camera``: a
        structured :class:`Explanation` with a sentence (see :func:`_explain.explain`)."""
        from knowledge_graph._explain import explain

        return explain(self, camera, algorithm, placement=placement, at=at, policies=policies)

    # ------------------------------------------------------------------ policies

    def validate_policy(self, policy: Policy) -> None:
        """Check that a policy names known zones, events, cameras, algorithms, devices."""
        zones = self._by_type[N.ZONE]
        if not any(zone_matches(policy.zone, z) for z in zones):
            raise PolicyError(
                f"policy {policy.id}: zone glob {policy.zone!r} matches no known zone",
                field="zone",
            )
        for ev in policy.events:
            if ev not in self._by_type[N.EVENT] and ev not in self._by_type[N.OBJECT]:
                raise PolicyError(f"policy {policy.id}: unknown event {ev!r}", field="events")
        for i, pin in enumerate(policy.pins):
            if pin.camera not in self._by_type[N.CAMERA]:
                raise PolicyError(
                    f"policy {policy.id}: pin names unknown camera {pin.camera!r}",
                    field=f"pins.{i}.camera",
                )
            if pin.algorithm not in self._by_type[N.ALGORITHM]:
                raise PolicyError(
                    f"policy {policy.id}: pin names unknown algorithm {pin.algorithm!r}",
                    field=f"pins.{i}.algorithm",
                )
        for i, ex in enumerate(policy.exclusions):
            if ex.algorithm not in self._by_type[N.ALGORITHM]:
                raise PolicyError(
                    f"policy {policy.id}: exclusion names unknown algorithm {ex.algorithm!r}",
                    field=f"exclusions.{i}.algorithm",
                )
            if ex.camera is not None and ex.camera not in self._by_type[N.CAMERA]:
                raise PolicyError(
                    f"policy {policy.id}: exclusion names unknown camera {ex.camera!r}",
                    field=f"exclusions.{i}.camera",
                )
            if ex.device is not None and ex.device not in self._by_type[N.DEVICE]:
                raise PolicyError(
                    f"policy {policy.id}: exclusion names unknown device {ex.device!r}",
                    field=f"exclusions.{i}.device",
                )

    def _check_pin_conflicts(self, policy: Policy) -> None:
        others = [p for p in self.policies.values() if p.id != policy.id] + [policy]
        pins = {(x.camera, x.algorithm): p.id for p in others for x in p.pins}
        for p in others:
            for x in p.exclusions:
                if x.camera is not None and (x.camera, x.algorithm) in pins:
                    pid = pins[(x.camera, x.algorithm)]
                    if policy.id in (p.id, pid):
                        raise PolicyError(
                            f"policy {policy.id}: pin of {x.algorithm!r} on camera "
                            f"{x.camera!r} (policy {pid}) conflicts with its exclusion "
                            f"(policy {p.id})",
                            field="pins",
                        )

    def add_policy(self, policy: Policy) -> Policy:
        """Validate and add a policy; an id already used is an error (nothing replaced)."""
        if policy.id in self.policies:
            raise PolicyError(f"policy {policy.id!r} already exists", field="id")
        self.validate_policy(policy)
        self._check_pin_conflicts(policy)
        self.policies[policy.id] = policy
        return policy

    def remove_policy(self, policy_id: str) -> Policy:
        if policy_id not in self.policies:
            raise UnknownNode(f"unknown policy {policy_id!r}", field="policy")
        return self.policies.pop(policy_id)

    def active_policies(self, at: datetime) -> list[Policy]:
        """Policies whose time windows contain ``at``."""
        return [p for p in self.policies.values() if p.active_at(at)]

    # ------------------------------------------------------------------ summary

    def stats(self) -> dict[str, int]:
        out = {f"{t.value}s": len(ids) for t, ids in self._by_type.items()}
        out["edges"] = self.g.number_of_edges()
        out["policies"] = len(self.policies)
        return out

    def check_indexes(self) -> None:
        """Rebuild every index from the networkx graph and compare (tests, after load)."""
        fresh = CityGraph(scene_threshold=self.scene_threshold)
        for key, data in self.g.nodes(data=True):
            t, i = split_key(key)
            fresh.g.add_node(key, **data)
            fresh._by_type[t][i] = None
        for u, v, k, data in self.g.edges(keys=True, data=True):
            fresh.g.add_edge(u, v, key=k, **data)
            fresh._index_add(EdgeType(k), split_key(u)[1], split_key(v)[1], data)
        for name in vars(fresh):
            if name.startswith("_") and getattr(fresh, name) != getattr(self, name):
                raise GraphError(f"index {name} out of step with the graph")


def _link_attrs(link: SceneLink) -> dict[str, Any]:
    return {
        "source": link.source,
        "confidence": link.confidence,
        "confirmed": link.confirmed,
        "rejected": link.rejected,
    }


def _capacity(device: str, ms_per_s: float, mem_mb: float, streams: int) -> dict[str, Any]:
    for name, val in (("ms_per_s", ms_per_s), ("mem_mb", mem_mb)):
        if (
            isinstance(val, bool)
            or not isinstance(val, int | float)
            or not (val > 0 and math.isfinite(val))
        ):
            raise GraphError(
                f"device {device!r}: capacity {name} must be a number > 0, got {val!r}",
                field=name,
            )
    if isinstance(streams, bool) or not isinstance(streams, int) or streams <= 0:
        raise GraphError(
            f"device {device!r}: capacity streams must be an integer > 0, got {streams!r}",
            field="streams",
        )
    return {"ms_per_s": ms_per_s, "mem_mb": mem_mb, "streams": streams}

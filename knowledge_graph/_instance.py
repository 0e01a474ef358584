"""The graph as a ``citybrain.schedule-instance/1`` document (see
``../shared/schemas/README.md``), and back.

The document has exactly the keys of that format (the scheduler's parser forbids
others), so what cannot be said in it is left out, never half-said:

- algorithms that detect nothing (they can serve no demand; the format requires
  ``detects``) and policies that cover no camera's zone or ask for no event (they
  create no demand; the scheduler refuses a policy matching no camera) are skipped;
- pins and exclusions are not part of the format. :func:`export_extensions` returns
  them as a separate document, and ``export_instance(..., extensions=True)`` embeds
  it under a top-level ``extensions`` key for a solver that reads it::

    {"citybrain.pins/1": [{"camera", "algorithm", "priority", "policy"}],
     "citybrain.exclusions/1": [{"algorithm", "camera"?, "device"?, "policy"}]}

  A pin asks for ``algorithm`` on ``camera`` (worth ``priority``); an exclusion
  forbids ``algorithm`` on ``camera`` and/or on ``device``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from knowledge_graph._errors import GraphError, UnknownNode
from knowledge_graph._graph import CityGraph
from knowledge_graph._ontology import NodeType
from knowledge_graph._policy import Policy, zone_matches

N = NodeType
INSTANCE_SCHEMA = "citybrain.schedule-instance/1"
PINS_EXTENSION = "citybrain.pins/1"
EXCLUSIONS_EXTENSION = "citybrain.exclusions/1"


def _num(x: float) -> float | int:
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _active(
    graph: CityGraph, policies: Iterable[Policy] | None, at: datetime | None
) -> list[Policy]:
    at = at or datetime.now()
    pols = list(graph.policies.values()) if policies is None else list(policies)
    return [p for p in pols if p.active_at(at)]


def export_instance(
    graph: CityGraph,
    policies: Iterable[Policy] | None = None,
    at: datetime | None = None,
    *,
    extensions: bool = False,
) -> dict[str, Any]:
    """The graph, its devices and the policies active at ``at`` (default: now, local wall
    clock) as a ``citybrain.schedule-instance/1`` document. ``policies`` defaults to the
    graph's own. A camera's scenes are those that count (operator-set, confirmed, or
    inferred at or above the graph's confidence threshold). With ``extensions`` (and
    active pins or exclusions), :func:`export_extensions` is embedded as
    ``extensions``."""
    active = _active(graph, policies, at)
    algorithms = []
    for a in graph.nodes(N.ALGORITHM):
        detects = graph.algorithm_detects(a)
        if not detects:
            continue
        info = graph.node(N.ALGORITHM, a)
        algorithms.append(
            {
                "id": a,
                "version": info["version"],
                "detects": detects,
                "scenes": graph.algorithm_scenes(a),
                "fps": _num(info["fps"]),
                "cost": {
                    t: {"ms_per_frame": c["ms_per_frame"], "mem_mb": c["mem_mb"]}
                    for t, c in graph.algorithm_cost(a).items()
                },
            }
        )
    cameras = []
    for c in graph.nodes(N.CAMERA):
        zone = graph.zone_of(c)
        if zone is None:
            raise GraphError(f"camera {c!r} is in no zone: give it one first", field="zone")
        cameras.append({"id": c, "zone": zone, "scenes": graph.camera_scenes(c)})
    camera_zones = {c["zone"] for c in cameras}
    devices = []
    for d in graph.nodes(N.DEVICE):
        cap = graph.node(N.DEVICE, d)["capacity"]
        if graph.device_target(d) is None:
            raise GraphError(f"device {d!r} has no hardware target", field="target")
        devices.append(
            {
                "id": d,
                "target": graph.device_target(d),
                "capacity": {
                    "ms_per_s": cap["ms_per_s"],
                    "mem_mb": cap["mem_mb"],
                    "streams": cap["streams"],
                },
                "cameras": graph.device_cameras(d),
            }
        )
    doc: dict[str, Any] = {
        "schema": INSTANCE_SCHEMA,
        "algorithms": algorithms,
        "cameras": cameras,
        "devices": devices,
        "policies": [
            {"zone": p.zone, "events": list(p.events), "priority": _num(p.priority)}
            for p in active
            if p.events and any(zone_matches(p.zone, z) for z in camera_zones)
        ],
    }
    if extensions:
        ext = _extensions(active)
        if ext[PINS_EXTENSION] or ext[EXCLUSIONS_EXTENSION]:
            doc["extensions"] = ext
    return doc


def export_extensions(
    graph: CityGraph,
    policies: Iterable[Policy] | None = None,
    at: datetime | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Pins and exclusions of the policies active at ``at``, which the instance format
    cannot carry: ``{"citybrain.pins/1": [...], "citybrain.exclusions/1": [...]}``."""
    return _extensions(_active(graph, policies, at))


def _extensions(active: list[Policy]) -> dict[str, list[dict[str, Any]]]:
    pins = [
        {"camera": x.camera, "algorithm": x.algorithm, "priority": _num(p.priority), "policy": p.id}
        for p in active
        for x in p.pins
    ]
    exclusions = [
        {
            "algorithm": x.algorithm,
            **({"camera": x.camera} if x.camera else {}),
            **({"device": x.device} if x.device else {}),
            "policy": p.id,
        }
        for p in active
        for x in p.exclusions
    ]
    return {PINS_EXTENSION: pins, EXCLUSIONS_EXTENSION: exclusions}


# ---------------------------------------------------------------------------
# import (an instance file -> a graph), e.g. to reproduce a benchmark instance
# ---------------------------------------------------------------------------


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Cost(_M):
    ms_per_frame: float = Field(gt=0)
    mem_mb: float = Field(gt=0)


class _Algorithm(_M):
    id: str
    version: str
    detects: list[str]
    scenes: list[str]
    fps: float = Field(gt=0)
    cost: dict[str, _Cost]


class _Camera(_M):
    id: str
    zone: str
    scenes: list[str]


class _Capacity(_M):
    ms_per_s: float = Field(gt=0)
    mem_mb: float = Field(gt=0)
    streams: int = Field(gt=0)


class _Device(_M):
    id: str
    target: str
    capacity: _Capacity
    cameras: list[str]


class _PolicyRow(_M):
    zone: str
    events: list[str] = Field(min_length=1)
    priority: float = Field(gt=0)


class _Instance(_M):
    schema_: Literal["citybrain.schedule-instance/1"] = Field(alias="schema")
    algorithms: list[_Algorithm]
    cameras: list[_Camera]
    devices: list[_Device]
    policies: list[_PolicyRow]
    extensions: dict[str, Any] = Field(default_factory=dict)


def import_instance(
    doc: Mapping[str, Any], *, graph: CityGraph | None = None, source: str = "instance"
) -> CityGraph:
    """Build (or extend) a graph from a ``citybrain.schedule-instance/1`` document.
    Scenes and events it names that the graph lacks are created; everything else
    (duplicate ids, unknown cameras, bad capacities) is an error naming the field.
    Policies get ids ``<source>-1``, ``<source>-2``... in document order."""
    try:
        inst = _Instance.model_validate(dict(doc))
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise GraphError(f"{source}: {loc}: {err['msg']}", field=loc) from None
    g = graph if graph is not None else CityGraph()
    raw = dict(doc)
    for i, a in enumerate(inst.algorithms):
        try:
            g.add_algorithm(
                a.id,
                version=a.version,
                detects=a.detects,
                scenes=a.scenes,
                fps=_num(raw["algorithms"][i]["fps"]),
                cost={t: dict(raw["algorithms"][i]["cost"][t]) for t in a.cost},
                create_missing=True,
            )
        except GraphError as e:
            raise type(e)(f"{source}: algorithms.{i}: {e.message}", field=e.field) from None
    for i, c in enumerate(inst.cameras):
        try:
            for s in c.scenes:
                if not g.has(N.SCENE, s):
                    g.add_node(N.SCENE, s, source=source)
            g.add_camera(c.id, zone=c.zone, scenes=c.scenes)
        except GraphError as e:
            raise type(e)(f"{source}: cameras.{i}: {e.message}", field=e.field) from None
    for i, d in enumerate(inst.devices):
        cap = raw["devices"][i]["capacity"]
        try:
            g.add_device(
                d.id,
                target=d.target,
                ms_per_s=cap["ms_per_s"],
                mem_mb=cap["mem_mb"],
                streams=cap["streams"],
                reaches=d.cameras,
            )
        except UnknownNode as e:
            raise UnknownNode(f"{source}: devices.{i}: {e.message}", field=e.field) from None
        except GraphError as e:
            raise type(e)(f"{source}: devices.{i}: {e.message}", field=e.field) from None
    for i, p in enumerate(inst.policies):
        for ev in p.events:
            if not g.has(N.EVENT, ev) and not g.has(N.OBJECT, ev):
                g.add_node(N.EVENT, ev, source=source)
        try:
            g.add_policy(
                Policy(
                    id=f"{source}-{i + 1}",
                    zone=p.zone,
                    events=p.events,
                    priority=raw["policies"][i]["priority"],
                )
            )
        except ValidationError as e:
            err = e.errors()[0]
            raise GraphError(f"{source}: policies.{i}: {err['msg']}", field="policies") from None
        except GraphError as e:
            raise type(e)(f"{source}: policies.{i}: {e.message}", field=e.field) from None
    return g

"""The knowledge graph and the current placement, read-only for viewers:

* ``GET /graph/zones`` — the zone tree (each zone with its cameras, direct and below);
* ``GET /graph/zones/{path}`` — a zone's cameras, each with its scenes (source,
  confidence, whether it counts), the devices reaching it and the algorithms
  applicable to it with the paths camera → scene → event ← algorithm justifying them;
* ``GET /graph/cameras/{camera}`` — one camera as in a zone's list;
* ``GET /graph/explain?camera=&algorithm=`` — :func:`knowledge_graph.explain` against
  the current plan;
* ``POST /graph/cameras/{camera}/scenes/{scene}/confirm|reject`` — an operator
  confirms or overrides an inferred scene;
* ``GET /assignments`` — the plan the re-planning service last saved
  (``<data_dir>/replan-state.json``) per device, with compute / model memory / decode
  slot use, and the unserved demands with their reason; ``?preview=true`` when none
  was saved: a plan computed now from the live graph (never saved, never published);
* ``GET /assignments/why?camera=&event=`` — why a demand is served where it is (and
  not on the other devices reaching the camera), or why it is not served.

The stored graph is loaded once per revision and shared by readers (never mutated);
the preview plan is cached per graph revision and set of active policies.
"""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path as FsPath
from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from cloud.api.deps import OperatorUser, ViewerUser
from cloud.api.errors import ERROR_RESPONSES
from cloud.errors import NotFound
from cloud.errors import graph_errors as kg_errors

router = APIRouter(tags=["graph"], responses=ERROR_RESPONSES)

#: search budget of a preview plan (seconds)
PREVIEW_TIME_LIMIT = 5.0
#: at most this many algorithms are explained in one "why?"
WHY_MAX_ALGORITHMS = 8
ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"

_lock = threading.Lock()


# ---------------------------------------------------------------------------
# loading: the stored graph (cached per revision), the saved or preview plan
# ---------------------------------------------------------------------------


def load_graph(app: Any) -> Any:
    """The stored graph (shared, read-only: callers must not mutate it)."""
    import knowledge_graph as kg

    engine = app.state.catalog.engine
    rev = kg.stored_revision(engine)
    with _lock:
        cached = getattr(app.state, "kg_cache", None)
        if cached is not None and cached.revision == rev:
            return cached
    with kg_errors():
        graph = kg.load(engine)
    with _lock:
        app.state.kg_cache = graph
    return graph


def state_path(app: Any) -> FsPath:
    return app.state.settings.data_dir / "replan-state.json"


class PlanSource(BaseModel):
    """Where the plan shown comes from."""

    kind: Literal["saved", "preview", "none"]
    label: str
    graph_revision: int | None = Field(default=None, description="graph the plan was made from")
    error: str | None = Field(default=None, description="why there is no plan")


def current_plan(app: Any, graph: Any, *, preview: bool) -> tuple[Any, PlanSource]:
    """(plan or None, its source): the saved plan; else, with ``preview``, one
    computed now from ``graph`` (cached per graph revision and active policies)."""
    import scheduler as sch

    path = state_path(app)
    try:
        state = sch.load_state(path)
    except ValueError as e:
        return None, PlanSource(kind="none", label="no readable plan", error=str(e))
    except OSError as e:
        return None, PlanSource(kind="none", label="no readable plan", error=f"{path}: {e}")
    if state.plan is not None:
        label = f"saved by the re-planning service (graph revision {state.graph_revision})"
        if state.graph_revision != graph.revision:
            label += f"; the graph is now at revision {graph.revision}"
        return state.plan, PlanSource(
            kind="saved", label=label, graph_revision=state.graph_revision
        )
    if not preview:
        return None, PlanSource(
            kind="none",
            label="the re-planning service has saved no plan yet (citybrain schedule run)",
        )
    return preview_plan(app, graph)


def placement_for(plan: Any, camera: str) -> dict[str, Any] | None:
    """The rows of ``plan`` about one camera, as a ``citybrain.schedule-plan/1``
    document: all :func:`knowledge_graph.explain` looks at (cheap at city scale)."""
    if plan is None:
        return None
    return {
        "schema": "citybrain.schedule-plan/1",
        "assignments": [a.model_dump() for a in plan.assignments if a.camera == camera],
        "served": [x.model_dump() for x in plan.served if x.camera == camera],
        "unserved": [x.model_dump() for x in plan.unserved if x.camera == camera],
        "objective": plan.objective,
    }


def preview_plan(app: Any, graph: Any) -> tuple[Any, PlanSource]:
    """A plan computed now from the live graph (export_instance + solve), not saved."""
    import knowledge_graph as kg
    import scheduler as sch

    now = datetime.now()
    active = frozenset(p.id for p in graph.active_policies(now))
    key = (graph.revision, active)
    with _lock:
        cached = getattr(app.state, "plan_preview", None)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
    try:
        doc = kg.export_instance(graph, at=now)
        ext = kg.export_extensions(graph, at=now)
        inst = sch.parse_instance(doc, "live graph")
        plan = sch.solve(inst, time_limit=PREVIEW_TIME_LIMIT, extensions=ext)
    except (kg.GraphError, sch.SchedulerError) as e:
        return None, PlanSource(
            kind="none", label="no preview: the live graph cannot be planned", error=str(e)
        )
    src = PlanSource(
        kind="preview",
        label=f"computed now from graph revision {graph.revision}: not saved, "
        "not published to any device",
        graph_revision=graph.revision,
    )
    with _lock:
        app.state.plan_preview = (key, plan, src)
    return plan, src


# ---------------------------------------------------------------------------
# zones
# ---------------------------------------------------------------------------


class ZoneNode(BaseModel):
    path: str
    name: str = Field(description="last segment of the path")
    parent: str | None
    depth: int
    cameras: int = Field(description="cameras directly in this zone")
    cameras_total: int = Field(description="cameras in this zone and below")


class ZoneTree(BaseModel):
    revision: int
    stats: dict[str, int]
    zones: list[ZoneNode] = Field(description="depth-first, children sorted by name")


def zone_tree(graph: Any) -> ZoneTree:
    from knowledge_graph import NodeType as N

    zones = graph.nodes(N.ZONE)
    parent = {z: (graph.zone_parents(z) or [None])[0] for z in zones}
    children: dict[str | None, list[str]] = {}
    for z in zones:
        children.setdefault(parent[z], []).append(z)
    direct = {z: 0 for z in zones}
    for c in graph.nodes(N.CAMERA):
        z = graph.zone_of(c)
        if z is not None:
            direct[z] += 1
    out: list[ZoneNode] = []
    total: dict[str, int] = {}

    def walk(z: str, depth: int) -> int:
        node = ZoneNode(
            path=z,
            name=z.rsplit("/", 1)[-1],
            parent=parent[z],
            depth=depth,
            cameras=direct[z],
            cameras_total=0,
        )
        out.append(node)
        n = direct[z]
        for ch in sorted(children.get(z, [])):
            n += walk(ch, depth + 1)
        node.cameras_total = total[z] = n
        return n

    for root in sorted(children.get(None, [])):
        walk(root, 0)
    return ZoneTree(revision=graph.revision, stats=graph.stats(), zones=out)


class SceneOut(BaseModel):
    scene: str
    source: str = Field(description="operator | inferred")
    confidence: float
    confirmed: bool
    rejected: bool
    counts: bool = Field(description="operator-set, confirmed or confident enough, not rejected")


class StepOut(BaseModel):
    scene: str
    event: str | None = Field(description="None: the algorithm applies to the scene only")
    path: list[str]
    sentence: str


class ApplicableOut(BaseModel):
    algorithm: str
    version: str
    scenes: list[str]
    events: list[str]
    justifications: list[StepOut]


class CameraOut(BaseModel):
    camera: str
    zone: str | None
    scenes: list[SceneOut]
    devices: list[str]
    algorithms: list[ApplicableOut]


class ZoneDetail(BaseModel):
    zone: str
    revision: int
    parent: str | None
    children: list[str]
    scene_threshold: float
    total: int = Field(description="cameras in the zone and below")
    offset: int
    cameras: list[CameraOut]


def camera_view(graph: Any, camera: str) -> CameraOut:
    th = graph.scene_threshold
    return CameraOut(
        camera=camera,
        zone=graph.zone_of(camera),
        scenes=[
            SceneOut(
                scene=link.scene,
                source=link.source,
                confidence=link.confidence,
                confirmed=link.confirmed,
                rejected=link.rejected,
                counts=link.effective(th),
            )
            for link in graph.scene_links(camera)
        ],
        devices=graph.camera_devices(camera),
        algorithms=[
            ApplicableOut(
                algorithm=a.algorithm,
                version=a.version,
                scenes=list(a.scenes),
                events=list(a.events),
                justifications=[
                    StepOut(scene=j.scene, event=j.event, path=list(j.path), sentence=j.sentence())
                    for j in a.justifications
                ],
            )
            for a in graph.applicable(camera)
        ],
    )


def zone_detail(graph: Any, zone: str, offset: int = 0, limit: int = 100) -> ZoneDetail:
    from knowledge_graph import NodeType as N

    if not graph.has(N.ZONE, zone):
        raise NotFound(f"unknown zone {zone!r}", field="zone")
    cams = graph.cameras_in_zone(zone)
    children = sorted(z for z in graph.nodes(N.ZONE) if graph.zone_parents(z) == [zone])
    return ZoneDetail(
        zone=zone,
        revision=graph.revision,
        parent=(graph.zone_parents(zone) or [None])[0],
        children=children,
        scene_threshold=graph.scene_threshold,
        total=len(cams),
        offset=offset,
        cameras=[camera_view(graph, c) for c in cams[offset : offset + limit]],
    )


@router.get("/graph/zones", response_model=ZoneTree)
def list_zones(request: Request, user: ViewerUser) -> ZoneTree:
    """The zone tree with camera counts, and the graph's node counts."""
    return zone_tree(load_graph(request.app))


@router.get("/graph/zones/{zone:path}", response_model=ZoneDetail)
def get_zone(
    request: Request,
    user: ViewerUser,
    zone: str = Path(max_length=512, description="zone path, e.g. longhua/street-12"),
    offset: int = Query(default=0, ge=0, le=10**7),
    limit: int = Query(default=50, ge=1, le=1000),
) -> ZoneDetail:
    """The cameras under a zone (a page of them), each with its scenes, devices and
    applicable algorithms with their justifying paths."""
    return zone_detail(load_graph(request.app), zone, offset, limit)


@router.get("/graph/cameras/{camera}", response_model=CameraOut)
def get_camera(request: Request, user: ViewerUser, camera: str = Path(pattern=ID)) -> CameraOut:
    """One camera: its scenes, the devices reaching it, and the algorithms applicable
    to it with the paths justifying each."""
    with kg_errors():
        return camera_view(load_graph(request.app), camera)


@router.get("/graph/explain")
def explain_pair(
    request: Request,
    user: ViewerUser,
    camera: str = Query(max_length=128),
    algorithm: str = Query(max_length=128),
    preview: bool = Query(default=False, description="explain against a preview plan"),
) -> dict[str, Any]:
    """:func:`knowledge_graph.explain` of an algorithm on a camera, against the current
    plan when there is one (``placed``/``device`` then say where it runs)."""
    graph = load_graph(request.app)
    plan, src = current_plan(request.app, graph, preview=preview)
    placement = placement_for(plan, camera)
    with kg_errors():
        e = graph.explain(camera, algorithm, placement=placement)
    return {**e.model_dump(mode="json"), "plan": src.model_dump()}


def _change_scene(request: Request, camera: str, scene: str, confirm: bool) -> CameraOut:
    import knowledge_graph as kg

    engine = request.app.state.catalog.engine
    with kg_errors():
        graph = kg.load(engine)  # a private copy: the cached one is shared
        if confirm:
            graph.confirm_scene(camera, scene)
        else:
            graph.reject_scene(camera, scene)
        kg.save(graph, engine)
    return camera_view(graph, camera)


@router.post("/graph/cameras/{camera}/scenes/{scene}/confirm", response_model=CameraOut)
def confirm_scene(
    request: Request,
    user: OperatorUser,
    camera: str = Path(pattern=ID),
    scene: str = Path(pattern=ID),
) -> CameraOut:
    """The operator confirms a camera's scene: it counts whatever its confidence."""
    return _change_scene(request, camera, scene, True)


@router.post("/graph/cameras/{camera}/scenes/{scene}/reject", response_model=CameraOut)
def reject_scene(
    request: Request,
    user: OperatorUser,
    camera: str = Path(pattern=ID),
    scene: str = Path(pattern=ID),
) -> CameraOut:
    """The operator overrides a camera's scene: it stops counting (and inference does
    not bring it back)."""
    return _change_scene(request, camera, scene, False)


# ---------------------------------------------------------------------------
# assignments
# ---------------------------------------------------------------------------


class Use(BaseModel):
    used: float
    capacity: float | None = Field(description="None: the device is not in the graph any more")
    fraction: float | None


class AssignmentOut(BaseModel):
    camera: str
    algorithm: str
    version: str
    events: list[str] = Field(description="demands of the camera this assignment serves")


class DeviceOut(BaseModel):
    device: str
    target: str | None
    known: bool = Field(description="the device is in the graph")
    compute: Use = Field(description="ms of compute per second")
    memory: Use = Field(description="MB of distinct models loaded")
    streams: Use = Field(description="cameras decoded")
    models: list[str]
    assignments: list[AssignmentOut]
    notes: list[str] = Field(default_factory=list)


class UnservedOut(BaseModel):
    camera: str
    event: str
    reason: str


class SolverOut(BaseModel):
    name: str
    seconds: float
    optimal: bool
    bound: float | None
    gap: float | None = Field(description="(bound - objective) / bound, when a bound is known")


class AssignmentsOut(BaseModel):
    source: PlanSource
    objective: float | None
    solver: SolverOut | None
    served: int
    unserved_total: int
    assignments_total: int
    devices_total: int
    offset: int
    devices: list[DeviceOut]
    unserved: list[UnservedOut]


def _use(used: float, cap: float | None) -> Use:
    return Use(used=used, capacity=cap, fraction=(used / cap) if cap else None)


def device_rows(graph: Any, plan: Any, only: set[str] | None = None) -> list[DeviceOut]:
    """Every device of the graph, then those only the plan names, with their load
    (``only``: just these devices)."""
    from knowledge_graph import NodeType as N

    by_dev: dict[str, list[Any]] = {}
    for a in plan.assignments if plan is not None else []:
        if only is None or a.device in only:
            by_dev.setdefault(a.device, []).append(a)
    served: dict[str, set[str]] = {}
    for s in plan.served if plan is not None else []:
        served.setdefault(s.camera, set()).add(s.event)
    names = list(graph.nodes(N.DEVICE)) + [d for d in by_dev if not graph.has(N.DEVICE, d)]
    if only is not None:
        names = [d for d in names if d in only]
    out = []
    for d in names:
        known = graph.has(N.DEVICE, d)
        target = graph.device_target(d) if known else None
        cap = graph.node(N.DEVICE, d)["capacity"] if known else None
        notes: list[str] = []
        if not known:
            notes.append("not in the graph any more: capacity and costs unknown")
        comp = 0.0
        models: dict[str, float] = {}
        cams: set[str] = set()
        rows = []
        for a in by_dev.get(d, []):
            cams.add(a.camera)
            events: list[str] = []
            if graph.has(N.ALGORITHM, a.algorithm):
                detects = graph.algorithm_detects(a.algorithm)
                events = [e for e in detects if e in served.get(a.camera, ())]
                cost = graph.algorithm_cost(a.algorithm).get(target or "")
                if cost is not None:
                    fps = float(graph.node(N.ALGORITHM, a.algorithm)["fps"])
                    comp += fps * cost["ms_per_frame"]
                    models[a.algorithm] = cost["mem_mb"]
                elif known:
                    notes.append(f"{a.algorithm}: no cost profile for {target} in the graph now")
            else:
                notes.append(f"{a.algorithm}: not in the graph any more")
            models.setdefault(a.algorithm, 0.0)
            rows.append(
                AssignmentOut(
                    camera=a.camera, algorithm=a.algorithm, version=a.version, events=events
                )
            )
        out.append(
            DeviceOut(
                device=d,
                target=target,
                known=known,
                compute=_use(comp, cap["ms_per_s"] if cap else None),
                memory=_use(sum(models.values()), cap["mem_mb"] if cap else None),
                streams=_use(float(len(cams)), float(cap["streams"]) if cap else None),
                models=list(models),
                assignments=rows,
                notes=list(dict.fromkeys(notes)),
            )
        )
    return out


def solver_out(plan: Any) -> SolverOut:
    info = plan.solver
    gap = None
    if info.bound is not None and info.bound > 0:
        gap = max(0.0, (info.bound - plan.objective) / info.bound)
    return SolverOut(
        name=info.name, seconds=info.seconds, optimal=info.optimal, bound=info.bound, gap=gap
    )


def assignments_view(
    app: Any,
    *,
    preview: bool = False,
    device: str | None = None,
    camera: str | None = None,
    offset: int = 0,
    limit: int = 50,
    unserved_limit: int = 200,
) -> AssignmentsOut:
    graph = load_graph(app)
    plan, src = current_plan(app, graph, preview=preview)
    devices = device_rows(graph, plan)
    if device:
        devices = [d for d in devices if d.device == device]
    if camera:
        devices = [d for d in devices if any(a.camera == camera for a in d.assignments)]
    unserved = list(plan.unserved) if plan is not None else []
    if camera:
        unserved = [u for u in unserved if u.camera == camera]
    return AssignmentsOut(
        source=src,
        objective=plan.objective if plan is not None else None,
        solver=solver_out(plan) if plan is not None else None,
        served=len(plan.served) if plan is not None else 0,
        unserved_total=len(unserved),
        assignments_total=len(plan.assignments) if plan is not None else 0,
        devices_total=len(devices),
        offset=offset,
        devices=devices[offset : offset + limit],
        unserved=[
            UnservedOut(camera=u.camera, event=u.event, reason=u.reason)
            for u in unserved[:unserved_limit]
        ],
    )


@router.get("/assignments", response_model=AssignmentsOut)
def get_assignments(
    request: Request,
    user: ViewerUser,
    preview: bool = Query(
        default=False, description="when no plan was saved, compute one now (not saved)"
    ),
    device: str | None = Query(default=None, max_length=128, description="only this device"),
    camera: str | None = Query(default=None, max_length=128, description="only this camera"),
    offset: int = Query(default=0, ge=0, le=10**7, description="first device of the page"),
    limit: int = Query(default=50, ge=1, le=1000, description="devices per page"),
) -> AssignmentsOut:
    """The current plan per device with its utilisation, and the unserved demands."""
    return assignments_view(
        request.app, preview=preview, device=device, camera=camera, offset=offset, limit=limit
    )


# ---------------------------------------------------------------------------
# why?
# ---------------------------------------------------------------------------


class DeviceVerdict(BaseModel):
    device: str
    target: str | None
    chosen: bool = Field(description="the plan runs the demand's algorithm here")
    verdict: str


class ServedBy(BaseModel):
    algorithm: str
    version: str
    device: str


class WhyOut(BaseModel):
    camera: str
    event: str
    status: Literal["served", "unserved", "not_demanded", "no_plan"]
    sentence: str
    source: PlanSource
    zone: str | None
    priority: float | None = Field(description="of the demand, from the policies active now")
    policies: list[str] = Field(description="active policies asking for it in the zone")
    served_by: list[ServedBy]
    reason: str | None = Field(description="the plan's reason when unserved")
    devices: list[DeviceVerdict] = Field(description="every device reaching the camera")
    explanations: list[dict[str, Any]] = Field(
        description="knowledge_graph.explain of the algorithms detecting the event"
    )


def _free(dev: DeviceOut) -> str:
    parts = []
    for name, u, unit in (
        ("compute", dev.compute, "ms/s"),
        ("memory", dev.memory, "MB"),
        ("decode slots", dev.streams, ""),
    ):
        if u.capacity is not None:
            parts.append(f"{name} {u.used:g}/{u.capacity:g}{(' ' + unit) if unit else ''}")
    return ", ".join(parts)


def _needs(graph: Any, algorithm: str, camera: str, dev: DeviceOut, decoded_on: str | None) -> str:
    """What placing ``algorithm`` on ``camera`` on ``dev`` would take, and what does not
    fit ('' when everything fits)."""
    from knowledge_graph import NodeType as N

    cost = graph.algorithm_cost(algorithm).get(dev.target or "")
    if cost is None:
        return f"{algorithm} has no cost profile for {dev.target}"
    fps = float(graph.node(N.ALGORITHM, algorithm)["fps"])
    need_ms = fps * cost["ms_per_frame"]
    short = []
    if dev.compute.capacity is not None and dev.compute.used + need_ms > dev.compute.capacity:
        left = dev.compute.capacity - dev.compute.used
        short.append(f"compute: needs {need_ms:g} ms/s, {left:g} left")
    if algorithm not in dev.models and dev.memory.capacity is not None:
        if dev.memory.used + cost["mem_mb"] > dev.memory.capacity:
            left = dev.memory.capacity - dev.memory.used
            short.append(f"memory: model needs {cost['mem_mb']:g} MB, {left:g} left")
    if decoded_on != dev.device and dev.streams.capacity is not None:
        if dev.streams.used + 1 > dev.streams.capacity:
            short.append(f"decode slots: all {dev.streams.capacity:g} in use")
    return "; ".join(short)


def why(app: Any, camera: str, event: str, *, preview: bool = False) -> WhyOut:
    """Why the demand (camera, event) is served where it is, or not served."""
    from knowledge_graph import NodeType as N

    graph = load_graph(app)
    if not graph.has(N.CAMERA, camera):
        raise NotFound(f"unknown camera {camera!r}", field="camera")
    if not graph.has(N.EVENT, event) and not graph.has(N.OBJECT, event):
        raise NotFound(f"unknown event {event!r}", field="event")
    plan, src = current_plan(app, graph, preview=preview)
    zone = graph.zone_of(camera)
    now = datetime.now()
    pols = [
        p
        for p in graph.active_policies(now)
        if zone is not None and p.matches_zone(zone) and event in p.events
    ]
    priority = max((float(p.priority) for p in pols), default=None)
    placement = placement_for(plan, camera)
    detecting = graph.algorithms_detecting(event)
    applicable = {a.algorithm for a in graph.applicable(camera)}
    ranked = [a for a in detecting if a in applicable] + [
        a for a in detecting if a not in applicable
    ]
    explanations = [
        graph.explain(camera, a, placement=placement, at=now).model_dump(mode="json")
        for a in ranked[:WHY_MAX_ALGORITHMS]
    ]
    out = WhyOut(
        camera=camera,
        event=event,
        status="no_plan",
        sentence="",
        source=src,
        zone=zone,
        priority=priority,
        policies=[p.id for p in pols],
        served_by=[],
        reason=None,
        devices=[],
        explanations=explanations,
    )
    reaching = graph.camera_devices(camera)
    rows = {d.device: d for d in device_rows(graph, plan, set(reaching))}
    on_cam = [a for a in plan.assignments if a.camera == camera] if plan is not None else []
    decoded_on = on_cam[0].device if on_cam else None
    served = plan is not None and any(s.camera == camera and s.event == event for s in plan.served)
    unserved = (
        next((u for u in plan.unserved if u.camera == camera and u.event == event), None)
        if plan is not None
        else None
    )
    if plan is None:
        out.sentence = f"there is no plan: {src.error or src.label}."
    elif served:
        out.status = "served"
        out.served_by = [
            ServedBy(algorithm=a.algorithm, version=a.version, device=a.device)
            for a in on_cam
            if a.algorithm in detecting
        ]
        how = ", ".join(f"{s.algorithm} {s.version} on {s.device}" for s in out.served_by)
        out.sentence = (
            f"{event} is watched on {camera} by {how or 'an algorithm no longer in the graph'}"
            + (f" (priority {priority:g}, policy {', '.join(out.policies)})" if pols else "")
            + "."
        )
    elif unserved is not None:
        out.status = "unserved"
        out.reason = unserved.reason
        out.sentence = f"{event} is not watched on {camera}: {unserved.reason}."
    else:
        out.status = "not_demanded"
        out.sentence = (
            f"the plan has no demand for {event} on {camera}: no policy active when it was "
            "made asked for it in this camera's zone"
            + (f" (policies asking now: {', '.join(out.policies)})" if pols else "")
            + "."
        )
    if plan is None:
        candidates = [a for a in ranked if a in applicable]
    else:
        candidates = [s.algorithm for s in out.served_by] or [a for a in ranked if a in applicable]
    excluded = {
        (x.algorithm, x.device): p.id
        for p in graph.active_policies(now)
        for x in p.exclusions
        if x.device is not None and x.camera in (None, camera)
    }
    for d in reaching:
        dev = rows.get(d)
        if dev is None:
            continue
        chosen = any(s.device == d for s in out.served_by)
        if chosen:
            verdict = (
                f"runs {', '.join(s.algorithm for s in out.served_by if s.device == d)} here "
                f"and decodes {camera} ({_free(dev)})"
            )
        elif not candidates:
            verdict = (
                f"no algorithm detecting {event} applies to the scenes of {camera}"
                if detecting
                else f"no algorithm in the graph detects {event}"
            )
        else:
            reasons = []
            for a in candidates[:3]:
                if (a, d) in excluded:
                    reasons.append(f"{a}: excluded here by policy {excluded[(a, d)]}")
                    continue
                short = _needs(graph, a, camera, dev, decoded_on)
                if short:
                    reasons.append(f"{a}: {short}")
                elif decoded_on is not None and decoded_on != d:
                    reasons.append(
                        f"{a} would fit, but {camera} is decoded on {decoded_on} "
                        f"(one decoding device per camera; {len(on_cam)} assignment(s) there)"
                    )
                else:
                    reasons.append(f"{a} would fit ({_free(dev)})")
            verdict = "; ".join(reasons)
        out.devices.append(
            DeviceVerdict(device=d, target=dev.target, chosen=chosen, verdict=verdict)
        )
    return out


@router.get("/assignments/why", response_model=WhyOut)
def get_why(
    request: Request,
    user: ViewerUser,
    camera: str = Query(max_length=128),
    event: str = Query(max_length=128),
    preview: bool = Query(default=False, description="against a preview plan (none saved)"),
) -> WhyOut:
    """Why a demand (camera, event) is served on its device and not on the others
    reaching the camera, or why it is not served: the plan's reason, each reaching
    device's verdict, and knowledge_graph.explain for the algorithms detecting it."""
    return why(request.app, camera, event, preview=preview)


__all__ = ["router"]

"""Operator policies (what must be watched where, when, with pins and exclusions) and
camera scene inference, both changing the stored knowledge graph:

* ``GET /policies[?at=ISO]`` — every policy, with whether it is active at ``at``
  (default now, the server's wall clock);
* ``POST /policies`` — add one (validated against the graph: zones, events, cameras,
  devices; an id already used is 409);
* ``PUT /policies/{id}`` — replace one; ``DELETE /policies/{id}`` — remove one;
* ``POST /graph/cameras/{camera}/scenes/infer`` — run a scene classifier from the
  store on the camera's keyframes and record inferred scenes (:mod:`cloud.scenes`).

Writes load a private copy of the graph and save it atomically; a graph saved by
someone else meanwhile is a 409 (``StaleGraph``), never a lost update. The re-planning
service sees the new graph revision and re-plans.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.deps import OperatorUser, SettingsDep, ViewerUser
from cloud.api.errors import ERROR_RESPONSES
from cloud.api.routes.graph import ID, kg_errors
from cloud.errors import Conflict, InvalidInput, NotFound

router = APIRouter(tags=["policies"], responses=ERROR_RESPONSES)


class PinIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    camera: str = Field(pattern=ID)
    algorithm: str = Field(pattern=ID)


class ExclusionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    algorithm: str = Field(pattern=ID)
    camera: str | None = Field(default=None, pattern=ID)
    device: str | None = Field(default=None, pattern=ID)


class PolicyCreate(BaseModel):
    """A policy as an operator writes it: ``hours`` like ``"7-19"`` or ``"22-6"``,
    ``days`` like ``"mon-fri"`` or ``"sat,sun"`` (empty: all day, every day)."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, pattern=ID, description="default: generated")
    zone: str = Field(min_length=1, max_length=500, description="glob over zone paths")
    events: list[str] = Field(default_factory=list, max_length=200)
    priority: float = Field(gt=0, le=1e6, description="points per (camera, event)")
    hours: str = Field(default="", max_length=200, description="e.g. 7-19 or 22-6,12-13")
    days: str = Field(default="", max_length=100, description="e.g. mon-fri or sat,sun")
    pins: list[PinIn] = Field(default_factory=list, max_length=1000)
    exclusions: list[ExclusionIn] = Field(default_factory=list, max_length=1000)
    description: str = Field(default="", max_length=2000)


class PolicyPublic(BaseModel):
    id: str
    zone: str
    events: list[str]
    priority: float
    hours: list[str] = Field(description="windows as H-H")
    days: list[str]
    pins: list[dict[str, Any]]
    exclusions: list[dict[str, Any]]
    description: str
    active: bool = Field(description="active at the time asked (default now)")


class SceneInferIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classifier: str = Field(pattern=ID, description="store algorithm whose labels are scenes")
    version: str | None = Field(default=None, max_length=64)
    channel: str = Field(default="stable", pattern=ID)
    frames: int = Field(default=8, ge=1, le=64)


class SceneInferOut(BaseModel):
    camera: str
    classifier: str
    frames: int
    scores: dict[str, float]
    recorded: list[str]
    counting: list[str] = Field(description="the camera's scenes that count now")


def _public(p: Any, at: datetime) -> PolicyPublic:
    d = p.model_dump(mode="json")
    return PolicyPublic(
        **{**d, "hours": [str(w) for w in p.hours], "days": [x.value for x in p.days]},
        active=p.active_at(at),
    )


def _policy(body: PolicyCreate, policy_id: str | None = None) -> Any:
    from pydantic import ValidationError

    import knowledge_graph as kg

    with kg_errors():
        fields: dict[str, Any] = {
            "zone": body.zone,
            "events": body.events,
            "priority": body.priority,
            "hours": kg.parse_hours(body.hours) if body.hours else [],
            "days": kg.parse_days(body.days) if body.days else [],
            "pins": [x.model_dump() for x in body.pins],
            "exclusions": [x.model_dump(exclude_none=True) for x in body.exclusions],
            "description": body.description,
        }
    if policy_id or body.id:
        fields["id"] = policy_id or body.id
    try:
        return kg.Policy.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "policy"
        raise InvalidInput(f"{where}: {first.get('msg')}", field=where) from None


def _write(request: Request, change: Any) -> Any:
    """Load a private copy of the graph, apply ``change(graph)``, save atomically."""
    import knowledge_graph as kg

    engine = request.app.state.catalog.engine
    with kg_errors():
        graph = kg.load(engine)
        out = change(graph)
        kg.save(graph, engine)
    return out


@router.get("/policies", response_model=list[PolicyPublic])
def list_policies(
    request: Request,
    user: ViewerUser,
    at: datetime | None = Query(default=None, description="ISO 8601; default now"),
) -> list[PolicyPublic]:
    from cloud.api.routes.graph import load_graph

    graph = load_graph(request.app)
    when = at or datetime.now()
    return [_public(p, when) for p in graph.policies.values()]


@router.post("/policies", response_model=PolicyPublic, status_code=201)
def create_policy(request: Request, user: OperatorUser, body: PolicyCreate) -> PolicyPublic:
    policy = _policy(body)

    def add(graph: Any) -> None:
        if policy.id in graph.policies:
            raise Conflict(f"policy {policy.id!r} already exists", field="id")
        graph.add_policy(policy)

    _write(request, add)
    return _public(policy, datetime.now())


@router.put("/policies/{policy_id}", response_model=PolicyPublic)
def replace_policy(
    request: Request, user: OperatorUser, body: PolicyCreate, policy_id: str = Path(pattern=ID)
) -> PolicyPublic:
    if body.id is not None and body.id != policy_id:
        raise InvalidInput(f"body id {body.id!r} is not the path's {policy_id!r}", field="id")
    policy = _policy(body, policy_id)

    def replace(graph: Any) -> None:
        if policy_id not in graph.policies:
            raise NotFound(f"unknown policy {policy_id!r}", field="policy_id")
        graph.remove_policy(policy_id)
        graph.add_policy(policy)

    _write(request, replace)
    return _public(policy, datetime.now())


@router.delete("/policies/{policy_id}", status_code=204)
def delete_policy(
    request: Request, user: OperatorUser, policy_id: str = Path(pattern=ID)
) -> Response:
    _write(request, lambda g: g.remove_policy(policy_id))
    return Response(status_code=204)


@router.post("/graph/cameras/{camera}/scenes/infer", response_model=SceneInferOut)
def infer_scenes(
    request: Request,
    user: OperatorUser,
    settings: SettingsDep,
    body: SceneInferIn,
    camera: str = Path(pattern=ID),
) -> SceneInferOut:
    """Run a scene classifier from the store on the camera's keyframes; record the
    scores as inferred scenes (operator, confirmed and rejected scenes stay)."""
    from cloud.api.routes.store import SettingsStore
    from cloud.scenes import infer_camera_scenes, load_classifier

    store = SettingsStore(settings).current()
    predictor = load_classifier(store, body.classifier, body.version, body.channel)

    def infer(graph: Any) -> SceneInferOut:
        out = infer_camera_scenes(graph, camera, predictor, frames=body.frames)
        return SceneInferOut(**out, counting=graph.camera_scenes(camera))

    return _write(request, infer)

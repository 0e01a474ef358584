"""Models in the catalog: listed for everyone; publishing (through the
evaluation gate, to the algorithm store) needs an operator."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from cloud.api.deps import CatalogDep, OperatorUser, SessionDep, SettingsDep, ViewerUser
from cloud.api.errors import ERROR_RESPONSES
from cloud.catalog.models import Model, ModelStatus, Role
from cloud.errors import Conflict, Forbidden, InvalidInput, NotFound, Unavailable

router = APIRouter(prefix="/models", tags=["models"], responses=ERROR_RESPONSES)

#: allowed status changes of a model record
MODEL_TRANSITIONS: dict[ModelStatus, frozenset[ModelStatus]] = {
    ModelStatus.CANDIDATE: frozenset({ModelStatus.PUBLISHED, ModelStatus.REJECTED}),
    ModelStatus.PUBLISHED: frozenset({ModelStatus.ARCHIVED}),
    ModelStatus.REJECTED: frozenset(),
    ModelStatus.ARCHIVED: frozenset(),
}


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    algorithm: str
    version: str
    task: str
    status: ModelStatus
    dataset_version_id: int | None
    task_id: str | None
    backbone: str | None
    labels: list[Any]
    params: dict[str, Any]
    metrics: dict[str, Any]
    artifacts: dict[str, Any]
    created_at: datetime


class ModelPage(BaseModel):
    items: list[ModelOut]
    total: int
    offset: int
    limit: int


@router.get("", response_model=ModelPage)
def list_models(
    _: ViewerUser,
    session: SessionDep,
    algorithm: str | None = Query(default=None, max_length=128),
    status: ModelStatus | None = None,
    offset: int = Query(default=0, ge=0, le=10**9),
    limit: int = Query(default=50, ge=1, le=500),
) -> ModelPage:
    q = select(Model)
    if algorithm is not None:
        q = q.where(Model.algorithm == algorithm)
    if status is not None:
        q = q.where(Model.status == status)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.scalars(
        q.order_by(Model.created_at.desc(), Model.id.desc()).offset(offset).limit(limit)
    )
    return ModelPage(
        items=[ModelOut.model_validate(m) for m in rows], total=total, offset=offset, limit=limit
    )


@router.get("/{model_id}", response_model=ModelOut)
def get_model(_: ViewerUser, session: SessionDep, model_id: int = Path(ge=1, le=2**62)) -> ModelOut:
    m = session.get(Model, model_id)
    if m is None:
        raise NotFound(f"no model {model_id}", field="model_id")
    return ModelOut.model_validate(m)


class PublishIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: str | None = Field(
        default="canary", max_length=64, description="store channel to point at it"
    )
    enforce_gate: bool = Field(
        default=True,
        description="refuse a candidate the evaluation gate did not pass (only an admin may "
        "turn this off)",
    )
    scenes: list[str] = Field(default_factory=list, max_length=100)
    detects: list[str] = Field(default_factory=list, max_length=100)
    fps: float = Field(default=2.0, ge=0.1, le=1000)


class PublishOut(BaseModel):
    algorithm: str
    version: str
    package_sha256: str
    size: int
    channel: str | None
    store: str


class _NoKey:
    """Stands in for the store when it has no signing key: ``publish_model``
    checks the model and the gate first and asks for the key last."""

    private_key = None


def _open_store(settings):  # type: ignore[no-untyped-def]
    import algorithm_store as st

    key_path = settings.store_key_file or settings.store_dir / "key"
    if not key_path.is_file():
        return _NoKey()
    from cloud.api.routes.store import BrokerAnnouncer

    private = st.load_private_key(key_path)
    return st.AlgorithmStore(
        settings.store_dir,
        public_key=st.public_key_raw(private),
        private_key=private,
        announcer=BrokerAnnouncer(settings.mqtt_url),  # publishing to a channel is announced
    )


@router.post("/{model_id}/publish", response_model=PublishOut)
def publish_model(
    user: OperatorUser,
    session: SessionDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    body: PublishIn | None = None,
    model_id: int = Path(ge=1, le=2**62),
) -> PublishOut:
    """Package, sign and publish a candidate to the algorithm store through the
    flywheel's evaluation gate (``cloud.flywheel.publish_model``): a candidate
    that is not better than the published version is refused (409)."""
    from cloud.flywheel._publish import publish_model as flywheel_publish

    body = body or PublishIn()
    m = session.get(Model, model_id)
    if m is None:
        raise NotFound(f"no model {model_id}", field="model_id")
    if not body.enforce_gate and user.role != Role.ADMIN:
        raise Forbidden("only an admin may publish past the evaluation gate", field="enforce_gate")
    if ModelStatus.PUBLISHED not in MODEL_TRANSITIONS[m.status]:
        raise Conflict(
            f"model {model_id} is {m.status.value}; only a candidate can be published",
            field="model_id",
        )
    algorithm, version = m.algorithm, m.version
    session.close()
    store = _open_store(settings)
    try:
        out = flywheel_publish(
            catalog,
            store,
            algorithm,
            version,
            channel=body.channel,
            enforce_gate=body.enforce_gate,
            scenes=body.scenes,
            detects=body.detects,
            fps=body.fps,
        )
    except InvalidInput as e:
        if isinstance(store, _NoKey) and e.field == "key":
            key = settings.store_key_file or settings.store_dir / "key"
            raise Unavailable(
                f"{key}: the store has no signing key; create one with `citybrain store keygen`",
                field="key",
            ) from None
        raise
    return PublishOut(**{k: out[k] for k in PublishOut.model_fields})

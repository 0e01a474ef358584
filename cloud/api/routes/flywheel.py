"""The flywheel over the API: submit pretraining and training jobs, plots and
lineage of trained models.

Roles: pretraining and training spend the cluster's compute and register
candidate models, so they need an **operator** (like annotation tasks);
annotators label, viewers read. A candidate is never deployed by training:
publishing (``POST /models/{id}/publish``) is a separate operator step
through the evaluation gate.

Jobs run on ``citybrain worker`` processes; the routes return the queued task
(``202``) whose progress is on ``GET /tasks/{id}`` and live on ``GET /events``.
Bad label sets (0 labels, one class, unknown classes, no test labels) fail
the task with a clear message before any compute is spent.
"""

from __future__ import annotations

import tempfile
from pathlib import Path as FsPath
from typing import Any, Literal

from fastapi import APIRouter, Body, Path
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud.api.deps import CatalogDep, OperatorUser, SessionDep, SettingsDep, ViewerUser
from cloud.api.errors import ERROR_RESPONSES
from cloud.api.routes.tasks import TaskOut
from cloud.catalog.models import (
    Annotation,
    Dataset,
    DatasetVersion,
    DatasetVersionItem,
    LineageEdge,
    Model,
    Task,
    TaskKind,
)
from cloud.errors import NotFound

router = APIRouter(tags=["flywheel"], responses=ERROR_RESPONSES)

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"


class PretrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(default=20, ge=1, le=1000, description="self-supervised epochs")
    max_images: int = Field(default=5000, ge=1, le=1_000_000, description="pool subsample")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class TrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    algorithm: str | None = Field(
        default=None, pattern=NAME, description="store id of the model (default: dataset name)"
    )
    task: Literal["classify", "detect"] = "classify"
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="TrainConfig (classify) or DetectConfig (detect) knobs, all optional",
    )


def _dataset(session: Session, name: str) -> Dataset:
    ds = session.scalar(select(Dataset).where(Dataset.name == name))
    if ds is None:
        raise NotFound(f"no dataset named {name!r}", field="name")
    return ds


def _submit(settings, catalog, kind: TaskKind, params: dict[str, Any], **kw: Any) -> Task:  # type: ignore[no-untyped-def]
    from cloud.jobs import JobQueue

    return JobQueue(settings, sessions=catalog.sessions).submit(kind, params, **kw)


@router.post("/datasets/{name}/pretrain", response_model=TaskOut, status_code=202)
def pretrain(
    user: OperatorUser,
    session: SessionDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    name: str = Path(max_length=128),
    body: PretrainIn | None = Body(default=None),
) -> TaskOut:
    """Queue self-supervised pretraining on the dataset's pool, then embeddings
    for every sample (similar-sample search in the console)."""
    body = body or PretrainIn()
    ds = _dataset(session, name)
    ds_id, ds_name = ds.id, ds.name
    session.close()
    task = _submit(
        settings,
        catalog,
        TaskKind.PRETRAINING,
        {"dataset": ds_name, **body.model_dump(), "created_by": user.name},
        title=f"pretrain {ds_name}",
        dataset_id=ds_id,
        created_by=user.name,
    )
    return TaskOut.model_validate(task)


@router.post("/datasets/{name}/train", response_model=TaskOut, status_code=202)
def train(
    user: OperatorUser,
    session: SessionDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    name: str = Path(max_length=128),
    body: TrainIn | None = Body(default=None),
) -> TaskOut:
    """Queue training: snapshot the dataset, train, evaluate on the frozen test
    split against the published version (gate), export a parity-checked ONNX
    and register a candidate model."""
    from cloud.flywheel._pipeline import train_config

    body = body or TrainIn()
    train_config(body.task, body.config)  # TrainConfig or DetectConfig knobs, checked now
    ds = _dataset(session, name)
    ds_id, ds_name = ds.id, ds.name
    session.close()
    algorithm = body.algorithm or ds_name
    params = {
        "dataset": ds_name,
        "task": body.task,
        "algorithm": algorithm,
        "config": body.config,
        "created_by": user.name,
    }
    task = _submit(
        settings,
        catalog,
        TaskKind.TRAINING,
        params,
        title=f"train {algorithm} on {ds_name}",
        dataset_id=ds_id,
        created_by=user.name,
    )
    return TaskOut.model_validate(task)


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------


def _model(session: Session, model_id: int) -> Model:
    m = session.get(Model, model_id)
    if m is None:
        raise NotFound(f"no model {model_id}", field="model_id")
    return m


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})


@router.get(
    "/models/{model_id}/plots/confusion.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "confusion matrix"}},
)
def confusion_png(
    _: ViewerUser, session: SessionDep, catalog: CatalogDep, model_id: int = Path(ge=1, le=2**62)
) -> Response:
    """The confusion matrix of the model on its frozen test split."""
    from cloud.flywheel._evaluate import Metrics, plot_confusion

    m = _model(session, model_id)
    sha = m.artifacts.get("confusion_png")
    if sha and catalog.blobs.exists(sha):
        return _png(catalog.blobs.get(sha))
    detail = m.metrics.get("detail")
    if not detail or m.task == "detect":
        raise NotFound(f"model {model_id} has no evaluation to plot", field="model_id")
    with tempfile.TemporaryDirectory() as tmp:
        out = plot_confusion(Metrics.model_validate(detail), FsPath(tmp) / "c.png")
        return _png(out.read_bytes())


@router.get(
    "/models/{model_id}/plots/pr.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "precision-recall curves"}},
)
def pr_png(
    _: ViewerUser, session: SessionDep, catalog: CatalogDep, model_id: int = Path(ge=1, le=2**62)
) -> Response:
    """A detector's precision-recall curve per class (AP@0.5) on its frozen test split."""
    from cloud.flywheel._evaluate import DetectMetrics, plot_pr_curves

    m = _model(session, model_id)
    sha = m.artifacts.get("pr_png")
    if sha and catalog.blobs.exists(sha):
        return _png(catalog.blobs.get(sha))
    detail = m.metrics.get("detail")
    if m.task != "detect" or not detail:
        raise NotFound(f"model {model_id} has no detection evaluation to plot", field="model_id")
    with tempfile.TemporaryDirectory() as tmp:
        out = plot_pr_curves(DetectMetrics.model_validate(detail), FsPath(tmp) / "pr.png")
        return _png(out.read_bytes())


class CurvePoint(BaseModel):
    model_id: int
    version: str
    round: int
    labels: int
    accuracy: float
    status: str


class LearningCurve(BaseModel):
    algorithm: str
    points: list[CurvePoint]


def learning_curve_points(session: Session, algorithm: str) -> list[CurvePoint]:
    """Every trained version of ``algorithm``, in training order: round,
    training labels and test accuracy."""
    rows = list(
        session.scalars(
            select(Model).where(Model.algorithm == algorithm).order_by(Model.created_at, Model.id)
        )
    )
    pts = []
    for r in rows:
        if "accuracy" not in r.metrics:
            continue
        pts.append(
            CurvePoint(
                model_id=r.id,
                version=r.version,
                round=len(pts) + 1,
                labels=int(r.params.get("train_labels") or 0),
                accuracy=float(r.metrics["accuracy"]),
                status=r.status.value,
            )
        )
    return pts


@router.get("/models/{model_id}/learning-curve", response_model=LearningCurve)
def learning_curve(
    _: ViewerUser, session: SessionDep, model_id: int = Path(ge=1, le=2**62)
) -> LearningCurve:
    """Test accuracy vs number of training labels over every version (round)
    of this model's algorithm."""
    m = _model(session, model_id)
    return LearningCurve(algorithm=m.algorithm, points=learning_curve_points(session, m.algorithm))


@router.get(
    "/models/{model_id}/plots/learning-curve.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "learning curve"}},
)
def learning_curve_png(
    _: ViewerUser, session: SessionDep, model_id: int = Path(ge=1, le=2**62)
) -> Response:
    from cloud.flywheel._evaluate import plot_learning_curve

    m = _model(session, model_id)
    pts = [p.model_dump() for p in learning_curve_points(session, m.algorithm)]
    with tempfile.TemporaryDirectory() as tmp:
        out = plot_learning_curve(pts, FsPath(tmp) / "lc.png")
        return _png(out.read_bytes())


# ---------------------------------------------------------------------------
# lineage
# ---------------------------------------------------------------------------


class TaskRef(BaseModel):
    id: str
    kind: str
    status: str
    title: str
    created_by: str
    params: dict[str, Any]
    created_at: str


class DatasetVersionRef(BaseModel):
    id: int
    dataset: str
    number: int
    sample_count: int
    labeled_count: int
    label_counts: dict[str, int]
    created_at: str


class BackboneRef(BaseModel):
    name: str | None
    pretraining_task: TaskRef | None


class EdgeOut(BaseModel):
    task_id: str
    direction: str
    entity: str
    entity_id: str
    role: str


class Lineage(BaseModel):
    model: dict[str, Any]
    training_task: TaskRef | None
    dataset_version: DatasetVersionRef | None
    backbone: BackboneRef
    params: dict[str, Any]
    edges: list[EdgeOut]


def _task_ref(t: Task | None) -> TaskRef | None:
    if t is None:
        return None
    return TaskRef(
        id=t.id,
        kind=t.kind.value,
        status=t.status.value,
        title=t.title,
        created_by=t.created_by,
        params=dict(t.params or {}),
        created_at=t.created_at.isoformat(),
    )


def model_lineage(session: Session, model_id: int) -> Lineage:
    """model ← training task ← dataset version (+ labels) ← backbone ← pretraining task."""
    m = _model(session, model_id)
    task = session.get(Task, m.task_id) if m.task_id else None
    dv_ref = None
    if m.dataset_version_id:
        dv = session.get(DatasetVersion, m.dataset_version_id)
        if dv is not None:
            ds = session.get(Dataset, dv.dataset_id)
            counts = dict(
                session.execute(
                    select(Annotation.label, func.count())
                    .join(DatasetVersionItem, DatasetVersionItem.annotation_id == Annotation.id)
                    .where(DatasetVersionItem.version_id == dv.id, Annotation.label.is_not(None))
                    .group_by(Annotation.label)
                ).all()
            )
            dv_ref = DatasetVersionRef(
                id=dv.id,
                dataset=ds.name if ds else str(dv.dataset_id),
                number=dv.number,
                sample_count=dv.sample_count,
                labeled_count=dv.labeled_count,
                label_counts={str(k): int(v) for k, v in counts.items()},
                created_at=dv.created_at.isoformat(),
            )
    pre = None
    if m.backbone:
        tid = session.scalar(
            select(LineageEdge.task_id)
            .join(Task, Task.id == LineageEdge.task_id)
            .where(
                LineageEdge.direction == "output",
                LineageEdge.entity == "embedding",
                LineageEdge.entity_id == m.backbone,
                Task.kind == TaskKind.PRETRAINING,
            )
            .order_by(LineageEdge.id.desc())
            .limit(1)
        )
        pre = session.get(Task, tid) if tid else None
    edges = (
        list(
            session.scalars(
                select(LineageEdge).where(LineageEdge.task_id == m.task_id).order_by(LineageEdge.id)
            )
        )
        if m.task_id
        else []
    )
    return Lineage(
        model={
            "id": m.id,
            "algorithm": m.algorithm,
            "version": m.version,
            "status": m.status.value,
            "package": m.artifacts.get("package"),
            "onnx": m.artifacts.get("onnx"),
        },
        training_task=_task_ref(task),
        dataset_version=dv_ref,
        backbone=BackboneRef(name=m.backbone, pretraining_task=_task_ref(pre)),
        params=dict(m.params or {}),
        edges=[
            EdgeOut(
                task_id=e.task_id,
                direction=e.direction,
                entity=e.entity,
                entity_id=e.entity_id,
                role=e.role,
            )
            for e in edges
        ],
    )


@router.get("/models/{model_id}/lineage", response_model=Lineage)
def lineage(_: ViewerUser, session: SessionDep, model_id: int = Path(ge=1, le=2**62)) -> Lineage:
    """Which data, which labels, which backbone, which parameters and which
    tasks produced this model."""
    return model_lineage(session, model_id)


__all__ = ["learning_curve_points", "model_lineage", "router"]

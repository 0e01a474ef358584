"""Catalog tables (SQLAlchemy 2). Data is the asset: rows users created are
never updated in place where that would lose history — annotations are
appended and superseded, dataset versions are immutable snapshots."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend. PostgreSQL stores
    ``timestamptz``; SQLite keeps no zone, so values are normalised to UTC on
    write and marked UTC on read. Naive values are taken to be UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


def _enum(e: type[enum.Enum]) -> Enum:
    return Enum(e, native_enum=False, length=32, values_callable=lambda x: [m.value for m in x])


class TaskKind(str, enum.Enum):
    IMPORT = "import"
    ANNOTATION = "annotation"
    MINING = "mining"
    TRAINING = "training"
    PRETRAINING = "pretraining"
    EMBEDDING = "embedding"
    EXPORT = "export"
    EVALUATION = "evaluation"


class TaskStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"  # dead-lettered after too many failed attempts

    @property
    def finished(self) -> bool:
        return self in (
            TaskStatus.SUCCEEDED,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
            TaskStatus.DEAD,
        )


#: Allowed task status transitions; anything else is a bug and is refused.
TASK_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.QUEUED: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELLED, TaskStatus.DEAD}),
    TaskStatus.RUNNING: frozenset(
        {
            TaskStatus.SUCCEEDED,
            TaskStatus.FAILED,
            TaskStatus.QUEUED,  # retried after a crash or failure
            TaskStatus.CANCELLED,
            TaskStatus.DEAD,
        }
    ),
    TaskStatus.FAILED: frozenset({TaskStatus.QUEUED}),  # manual re-run
    TaskStatus.DEAD: frozenset({TaskStatus.QUEUED}),
    TaskStatus.SUCCEEDED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


class AnnotationKind(str, enum.Enum):
    CLASSIFICATION = "classification"
    BOXES = "boxes"


class AnnotationSource(str, enum.Enum):
    HUMAN = "human"
    IMPORT = "import"
    MODEL = "model"  # a pre-label
    ORACLE = "oracle"  # simulated annotator (demo / harness), clearly marked


class ReviewState(str, enum.Enum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    CORRECTED = "corrected"
    REJECTED = "rejected"


class ModelStatus(str, enum.Enum):
    CANDIDATE = "candidate"
    PUBLISHED = "published"
    REJECTED = "rejected"
    ARCHIVED = "archived"


class Role(str, enum.Enum):
    ADMIN = "admin"
    OPERATOR = "operator"
    ANNOTATOR = "annotator"
    VIEWER = "viewer"


class Split(str, enum.Enum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[list[Any]] = mapped_column(default=list)  # ordered class names
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")


class Sample(Base):
    """One image, identified by the sha256 of its bytes (its blob)."""

    __tablename__ = "samples"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex
    media_type: Mapped[str] = mapped_column(String(64), default="image/jpeg")
    width: Mapped[int] = mapped_column(Integer, default=0)
    height: Mapped[int] = mapped_column(Integer, default=0)
    size: Mapped[int] = mapped_column(Integer, default=0)
    phash: Mapped[str | None] = mapped_column(String(16), default=None)
    source: Mapped[str] = mapped_column(Text, default="")  # original path / URL / topic
    frame_index: Mapped[int | None] = mapped_column(Integer, default=None)
    # provenance
    camera: Mapped[str | None] = mapped_column(String(128), default=None)
    device: Mapped[str | None] = mapped_column(String(128), default=None)
    model_version: Mapped[str | None] = mapped_column(String(64), default=None)
    captured_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    selector: Mapped[str | None] = mapped_column(String(64), default=None)
    scores: Mapped[dict[str, Any]] = mapped_column(default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    __table_args__ = (
        Index("ix_samples_camera", "camera"),
        Index("ix_samples_device", "device"),
    )


class DatasetSample(Base):
    """Membership of a sample in a dataset's working set, and its pool."""

    __tablename__ = "dataset_samples"
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    sample_id: Mapped[str] = mapped_column(ForeignKey("samples.id"), primary_key=True)
    pool: Mapped[str] = mapped_column(String(64), default="main")  # main | field_hard | ...
    split: Mapped[Split | None] = mapped_column(_enum(Split), default=None)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    added_by_task: Mapped[str | None] = mapped_column(ForeignKey("tasks.id"), default=None)
    # the current (newest, not superseded) label of the sample in this dataset;
    # a pointer kept by cloud.catalog.annotate, the history lives in `annotations`
    current_annotation_id: Mapped[int | None] = mapped_column(
        ForeignKey("annotations.id"), default=None
    )
    label: Mapped[str | None] = mapped_column(String(128), default=None)
    # the sample's provenance, copied from `samples` when the membership is
    # created (a sample's provenance never changes), so the console filters and
    # pages on this table's indexes alone, without a join to `samples`
    camera: Mapped[str | None] = mapped_column(String(128), default=None)
    device: Mapped[str | None] = mapped_column(String(128), default=None)
    # byte-wise ("C") order on PostgreSQL, as SQLite's default BINARY collation,
    # so a prefix is the index range [prefix, prefix with its last char + 1)
    source: Mapped[str] = mapped_column(
        Text().with_variant(Text(collation="C"), "postgresql"), default=""
    )
    __table_args__ = (
        Index("ix_dataset_samples_pool", "dataset_id", "pool"),
        Index("ix_dataset_samples_order", "dataset_id", "added_at", "sample_id"),
        Index("ix_dataset_samples_label", "dataset_id", "label", "added_at", "sample_id"),
        Index("ix_dataset_samples_camera", "dataset_id", "camera", "added_at", "sample_id"),
        Index("ix_dataset_samples_device", "dataset_id", "device", "added_at", "sample_id"),
        Index("ix_dataset_samples_source", "dataset_id", "source", "added_at", "sample_id"),
    )


class Annotation(Base):
    """A label on a sample in a dataset. Appended, never edited: a correction
    is a new row whose ``supersedes_id`` points at the old one."""

    __tablename__ = "annotations"
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    sample_id: Mapped[str] = mapped_column(ForeignKey("samples.id"))
    kind: Mapped[AnnotationKind] = mapped_column(_enum(AnnotationKind))
    label: Mapped[str | None] = mapped_column(String(128), default=None)
    boxes: Mapped[list[Any] | None] = mapped_column(default=None)  # [{x1,y1,x2,y2,label}] pixels
    source: Mapped[AnnotationSource] = mapped_column(_enum(AnnotationSource))
    annotator: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    prelabel_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"), default=None)
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"), default=None)
    task_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id"), default=None)
    model_version: Mapped[str | None] = mapped_column(String(64), default=None)
    score: Mapped[float | None] = mapped_column(Float, default=None)
    review: Mapped[ReviewState] = mapped_column(_enum(ReviewState), default=ReviewState.PENDING)
    __table_args__ = (Index("ix_annotations_ds_sample", "dataset_id", "sample_id"),)


class DatasetVersion(Base):
    """Immutable snapshot of membership + the labels current at that instant."""

    __tablename__ = "dataset_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    note: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[list[Any]] = mapped_column(default=list)
    sample_count: Mapped[int] = mapped_column(Integer, default=0)
    labeled_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    task_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id"), default=None)
    __table_args__ = (UniqueConstraint("dataset_id", "number"),)


class DatasetVersionItem(Base):
    __tablename__ = "dataset_version_items"
    version_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="CASCADE"), primary_key=True
    )
    sample_id: Mapped[str] = mapped_column(ForeignKey("samples.id"), primary_key=True)
    annotation_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"), default=None)
    split: Mapped[Split | None] = mapped_column(_enum(Split), default=None)


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[TaskKind] = mapped_column(_enum(TaskKind))
    status: Mapped[TaskStatus] = mapped_column(_enum(TaskStatus), default=TaskStatus.QUEUED)
    title: Mapped[str] = mapped_column(Text, default="")
    dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), default=None
    )
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    message: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    logs: Mapped[list[TaskLog]] = relationship(
        back_populates="task", order_by="TaskLog.id", cascade="all, delete-orphan"
    )


class TaskLog(Base):
    __tablename__ = "task_logs"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    level: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text)
    task: Mapped[Task] = relationship(back_populates="logs")


class AnnotationAssignment(Base):
    """A sample of an annotation task handed to one annotator (batched)."""

    __tablename__ = "annotation_assignments"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    sample_id: Mapped[str] = mapped_column(ForeignKey("samples.id"))
    annotator: Mapped[str | None] = mapped_column(String(128), default=None)
    batch: Mapped[int | None] = mapped_column(Integer, default=None)
    overlap: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text, default=None)  # why it was chosen (mining)
    prelabel_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"), default=None)
    annotation_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"), default=None)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (
        UniqueConstraint("task_id", "sample_id", "annotator"),
        Index("ix_assign_task_annotator", "task_id", "annotator", "done"),
    )


class Model(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(16), default="classify")
    status: Mapped[ModelStatus] = mapped_column(_enum(ModelStatus), default=ModelStatus.CANDIDATE)
    dataset_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("dataset_versions.id"), default=None
    )
    task_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id"), default=None)
    backbone: Mapped[str | None] = mapped_column(String(128), default=None)
    labels: Mapped[list[Any]] = mapped_column(default=list)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    artifacts: Mapped[dict[str, Any]] = mapped_column(default=dict)  # name -> sha256 blob
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    __table_args__ = (UniqueConstraint("algorithm", "version"),)


class LineageEdge(Base):
    """task -> input/output entity. ``entity`` is 'dataset_version', 'model',
    'sample', 'annotation', 'blob', 'dataset', 'embedding', 'package'."""

    __tablename__ = "lineage_edges"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    direction: Mapped[str] = mapped_column(String(8))  # input | output
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(64), default="")
    __table_args__ = (Index("ix_lineage_entity", "entity", "entity_id"),)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(_enum(Role))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)

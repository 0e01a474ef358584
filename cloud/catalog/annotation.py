"""Annotation tasks: distributed labeling with batches, a review pass and
inter-annotator agreement.

An annotation task is a :class:`~cloud.catalog.models.Task` of kind
``annotation`` whose items are :class:`~cloud.catalog.models.AnnotationAssignment`
rows. Samples are split into batches; an annotator who asks for work gets
their own open items first, then claims the next unclaimed batch (atomically,
so two annotators never get the same batch). A sample is labeled by exactly one
annotator unless it is in the *overlap sample*: those are given to several
annotators so their agreement can be measured (Cohen's kappa per pair,
Fleiss' kappa over all, raw agreement).

Labels are appended, never edited (see :class:`~cloud.catalog.models.Annotation`):
a re-label or a reviewer's correction is a new row superseding the old one.

Errors (all from :mod:`cloud.errors`)::

    InvalidInput   unknown label, bad box, unknown sample, bad spec field
    NotFound       no such task / dataset / item
    Forbidden      the item belongs to another annotator, annotator not on the task
    Conflict       the task is closed

Every function takes an open :class:`~sqlalchemy.orm.Session`; the caller owns
the transaction. Functions that write labels also take the
:class:`~cloud.catalog.Catalog` whose ``annotate`` keeps each sample's current
label (they join the caller's session).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from cloud.catalog.models import (
    TASK_TRANSITIONS,
    Annotation,
    AnnotationAssignment,
    AnnotationKind,
    AnnotationSource,
    Dataset,
    DatasetSample,
    LineageEdge,
    ReviewState,
    Sample,
    Task,
    TaskKind,
    TaskStatus,
    utcnow,
)
from cloud.errors import Conflict, Forbidden, InvalidInput, NotFound

if TYPE_CHECKING:
    from cloud.catalog._service import Catalog

# --------------------------------------------------------------------------- models


class Box(BaseModel):
    """An axis-aligned box in pixels of the sample's image."""

    model_config = ConfigDict(extra="forbid")
    x1: float = Field(ge=0, le=1e6)
    y1: float = Field(ge=0, le=1e6)
    x2: float = Field(ge=0, le=1e6)
    y2: float = Field(ge=0, le=1e6)
    label: str = Field(min_length=1, max_length=128)

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        if self.x2 <= self.x1 or self.y2 <= self.y1:
            raise ValueError("a box needs x2 > x1 and y2 > y1")
        return self


class PreLabel(BaseModel):
    """A model's suggestion for one sample."""

    model_config = ConfigDict(extra="forbid")
    label: str | None = Field(default=None, min_length=1, max_length=128)
    boxes: list[Box] | None = None
    score: float | None = Field(default=None, ge=0, le=1)
    model_version: str | None = Field(default=None, max_length=64)


class AnnotationTaskSpec(BaseModel):
    """What to label, by whom, and how."""

    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(min_length=1, max_length=128)
    title: str = Field(default="", max_length=500)
    kind: AnnotationKind = AnnotationKind.CLASSIFICATION
    labels: list[str] | None = Field(
        default=None, description="classes offered; default: the dataset's labels"
    )
    sample_ids: list[str] | None = Field(
        default=None,
        description="samples to label; default: the dataset's unlabeled samples (up to `limit`)",
    )
    limit: int = Field(default=1000, ge=1, le=100_000)
    annotators: list[str] = Field(
        default_factory=list,
        description="who may work on it; empty: anyone with the annotator role",
    )
    batch_size: int = Field(default=20, ge=1, le=10_000)
    overlap: int = Field(
        default=0, ge=0, le=100_000, description="samples labeled by several annotators"
    )
    overlap_annotators: int | None = Field(
        default=None, ge=2, description="annotators per overlap sample; default all"
    )
    prelabels: dict[str, PreLabel] = Field(
        default_factory=dict, description="sample id -> model suggestion"
    )
    use_model_prelabels: bool = Field(
        default=True, description="also use the newest model pre-label already in the catalog"
    )
    reasons: dict[str, str] = Field(
        default_factory=dict,
        description="sample id -> why it was chosen (e.g. the mining strategy and score)",
    )

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if any(not (1 <= len(x) <= 128) for x in v):
            raise ValueError("each label must have 1 to 128 characters")
        if len(set(v)) != len(v):
            raise ValueError("labels must be unique")
        return v

    @field_validator("annotators")
    @classmethod
    def _annotators(cls, v: list[str]) -> list[str]:
        if any(not (1 <= len(x) <= 128) for x in v):
            raise ValueError("each annotator name must have 1 to 128 characters")
        if len(set(v)) != len(v):
            raise ValueError("annotators must be unique")
        return v


class ReviewAction(str, Enum):
    ACCEPT = "accept"
    CORRECT = "correct"
    REJECT = "reject"


class ItemView(BaseModel):
    """One item of an annotator's queue, as the console shows it."""

    assignment_id: int
    sample_id: str
    batch: int | None
    overlap: bool
    done: bool
    reason: str | None
    width: int
    height: int
    prelabel: PreLabel | None
    prelabel_id: int | None
    label: str | None
    boxes: list[dict[str, Any]] | None
    annotation_id: int | None
    review: ReviewState | None


class TaskSummary(BaseModel):
    id: str
    title: str
    dataset: str | None
    kind: AnnotationKind
    labels: list[str]
    annotators: list[str]
    status: TaskStatus
    progress: float
    total: int
    done: int
    samples: int
    overlap_samples: int
    unclaimed_batches: int
    per_annotator: dict[str, dict[str, int]]
    created_by: str
    created_at: datetime


class PairAgreement(BaseModel):
    a: str
    b: str
    items: int
    raw: float | None
    cohen_kappa: float | None


class Agreement(BaseModel):
    """Agreement on the overlap sample. For box tasks two annotations 'agree'
    (raw agreement) when their box sets match one to one (same label,
    IoU >= 0.5); the kappas are then computed on a per-item category, the
    sorted labels of its boxes (geometry is not part of the kappas)."""

    task_id: str
    kind: AnnotationKind
    items: int = Field(description="overlap samples labeled by at least two annotators")
    raters: int
    raw_agreement: float | None = Field(description="mean pairwise agreement over items")
    fleiss_kappa: float | None = Field(description="over items with the modal number of raters")
    pairs: list[PairAgreement]


# --------------------------------------------------------------------------- helpers


def _dataset(session: Session, name: str) -> Dataset:
    ds = session.scalar(select(Dataset).where(Dataset.name == name))
    if ds is None:
        raise NotFound(f"no dataset named {name!r}", field="dataset")
    return ds


def get_annotation_task(session: Session, task_id: str) -> Task:
    task = session.get(Task, task_id)
    if task is None or task.kind != TaskKind.ANNOTATION:
        raise NotFound(f"no annotation task {task_id!r}", field="task_id")
    return task


def _transition(task: Task, to: TaskStatus) -> None:
    if task.status == to:
        return
    if to not in TASK_TRANSITIONS[task.status]:
        raise Conflict(f"task {task.id} cannot go from {task.status.value} to {to.value}")
    task.status = to
    if to == TaskStatus.RUNNING and task.started_at is None:
        task.started_at = utcnow()
    if to.finished:
        task.finished_at = utcnow()


def _check_label(task: Task, label: str, field: str) -> None:
    labels = task.params.get("labels") or []
    if label not in labels:
        raise InvalidInput(f"unknown label {label!r}; this task's labels are {labels}", field=field)


def _normalize_boxes(task: Task, boxes: list[Box] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, b in enumerate(boxes):
        box = b if isinstance(b, Box) else Box.model_validate(b)
        _check_label(task, box.label, f"boxes[{i}].label")
        out.append(box.model_dump())
    return out


def _task_kind(task: Task) -> AnnotationKind:
    return AnnotationKind(task.params.get("annotation_kind", AnnotationKind.CLASSIFICATION.value))


def _latest_model_prelabels(session: Session, dataset_id: int, sample_ids: list[str]) -> dict:
    found: dict[str, Annotation] = {}
    for chunk in _chunks(sample_ids, 500):
        rows = session.scalars(
            select(Annotation)
            .where(
                Annotation.dataset_id == dataset_id,
                Annotation.sample_id.in_(chunk),
                Annotation.source == AnnotationSource.MODEL,
            )
            .order_by(Annotation.id)
        )
        for a in rows:
            found[a.sample_id] = a  # newest wins
    return found


def _chunks(seq: list[str], n: int):  # type: ignore[no-untyped-def]
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _current_pointer(session: Session, dataset_id: int, sample_id: str) -> DatasetSample | None:
    return session.get(DatasetSample, (dataset_id, sample_id))


# --------------------------------------------------------------------------- create


def create_annotation_task(
    catalog: Catalog, session: Session, spec: AnnotationTaskSpec, *, created_by: str
) -> Task:
    """Create the task and its assignments (batches + overlap items). Task
    labels missing from the dataset are appended to the dataset's labels."""
    ds = _dataset(session, spec.dataset)
    labels = spec.labels if spec.labels is not None else list(ds.labels or [])
    if not labels:
        raise InvalidInput(
            f"dataset {ds.name!r} has no labels; pass `labels` for the task", field="labels"
        )
    if any(lab not in ds.labels for lab in labels):
        catalog.add_labels(ds.id, labels, session=session)

    if spec.sample_ids is not None:
        wanted = list(dict.fromkeys(spec.sample_ids))
        if not wanted:
            raise InvalidInput("sample_ids is empty", field="sample_ids")
        present: set[str] = set()
        for chunk in _chunks(wanted, 500):
            present.update(
                session.scalars(
                    select(DatasetSample.sample_id).where(
                        DatasetSample.dataset_id == ds.id, DatasetSample.sample_id.in_(chunk)
                    )
                )
            )
        missing = [s for s in wanted if s not in present]
        if missing:
            raise InvalidInput(
                f"{len(missing)} sample(s) are not in dataset {ds.name!r}, e.g. {missing[0]!r}",
                field="sample_ids",
            )
        sample_ids = wanted
    else:
        sample_ids = list(
            session.scalars(
                select(DatasetSample.sample_id)
                .where(
                    DatasetSample.dataset_id == ds.id,
                    DatasetSample.current_annotation_id.is_(None),
                )
                .order_by(DatasetSample.added_at, DatasetSample.sample_id)
                .limit(spec.limit)
            )
        )
        if not sample_ids:
            raise InvalidInput(f"dataset {ds.name!r} has no unlabeled samples", field="sample_ids")

    in_task = set(sample_ids)
    unknown_pre = [s for s in spec.prelabels if s not in in_task]
    if unknown_pre:
        raise InvalidInput(
            f"pre-label for a sample not in the task: {unknown_pre[0]!r}", field="prelabels"
        )
    unknown_reason = [s for s in spec.reasons if s not in in_task]
    if unknown_reason:
        raise InvalidInput(
            f"reason for a sample not in the task: {unknown_reason[0]!r}", field="reasons"
        )

    if spec.overlap:
        if len(spec.annotators) < 2:
            raise InvalidInput(
                "an overlap sample needs at least two named annotators", field="annotators"
            )
        if spec.overlap > len(sample_ids):
            raise InvalidInput(
                f"overlap {spec.overlap} is larger than the {len(sample_ids)} samples",
                field="overlap",
            )
        k = spec.overlap_annotators or len(spec.annotators)
        if k > len(spec.annotators):
            raise InvalidInput(
                f"overlap_annotators {k} > {len(spec.annotators)} annotators",
                field="overlap_annotators",
            )
    else:
        k = 0

    task = Task(
        kind=TaskKind.ANNOTATION,
        title=spec.title or f"label {len(sample_ids)} samples of {ds.name}",
        dataset_id=ds.id,
        params={
            "annotation_kind": spec.kind.value,
            "labels": labels,
            "annotators": spec.annotators,
            "batch_size": spec.batch_size,
            "overlap": spec.overlap,
            "overlap_annotators": k,
            "samples": len(sample_ids),
        },
        created_by=created_by,
    )
    session.add(task)
    session.flush()

    # pre-labels: explicit ones become MODEL annotations; else the newest in the catalog
    pre_ids: dict[str, int] = {}
    if spec.use_model_prelabels:
        for sid, a in _latest_model_prelabels(session, ds.id, sample_ids).items():
            pre_ids[sid] = a.id
    for sid, pre in spec.prelabels.items():
        if spec.kind == AnnotationKind.CLASSIFICATION:
            if pre.label is None:
                raise InvalidInput(
                    "a classification pre-label needs `label`", field=f"prelabels.{sid}"
                )
            _check_label(task, pre.label, f"prelabels.{sid}.label")
            boxes = None
        else:
            if pre.boxes is None:
                raise InvalidInput("a box pre-label needs `boxes`", field=f"prelabels.{sid}")
            boxes = _normalize_boxes(task, pre.boxes)
        row = catalog.annotate(
            ds.id,
            sid,
            label=pre.label if spec.kind == AnnotationKind.CLASSIFICATION else None,
            boxes=boxes,
            annotator=pre.model_version or "model",
            source=AnnotationSource.MODEL,
            task_id=task.id,
            model_version=pre.model_version,
            score=pre.score,
            session=session,
        )
        pre_ids[sid] = row.id

    # overlap sample: the first `overlap` samples, each to k annotators (rotating)
    overlap_ids = sample_ids[: spec.overlap]
    rest = sample_ids[spec.overlap :]
    rot = itertools.cycle(range(len(spec.annotators))) if spec.annotators else None
    for sid in overlap_ids:
        start = next(rot) if rot else 0
        for j in range(k):
            who = spec.annotators[(start + j) % len(spec.annotators)]
            session.add(
                AnnotationAssignment(
                    task_id=task.id,
                    sample_id=sid,
                    annotator=who,
                    batch=None,
                    overlap=True,
                    prelabel_id=pre_ids.get(sid),
                    reason=spec.reasons.get(sid),
                )
            )
    for i, sid in enumerate(rest):
        session.add(
            AnnotationAssignment(
                task_id=task.id,
                sample_id=sid,
                annotator=None,
                batch=i // spec.batch_size,
                overlap=False,
                prelabel_id=pre_ids.get(sid),
                reason=spec.reasons.get(sid),
            )
        )
    session.add(
        LineageEdge(
            task_id=task.id, direction="input", entity="dataset", entity_id=str(ds.id), role="label"
        )
    )
    _transition(task, TaskStatus.RUNNING)
    task.message = f"0/{len(rest) + len(overlap_ids) * k} items labeled"
    session.flush()
    return task


# --------------------------------------------------------------------------- hand-out


def _may_work(task: Task, annotator: str) -> None:
    allowed = task.params.get("annotators") or []
    if allowed and annotator not in allowed:
        raise Forbidden(f"{annotator!r} is not an annotator of task {task.id}", field="annotator")
    if task.status.finished:
        raise Conflict(f"task {task.id} is {task.status.value}")


def claim_batch(session: Session, task: Task, annotator: str) -> int | None:
    """Give the next unclaimed batch to ``annotator``; returns its number or None."""
    for _ in range(20):  # retry if another annotator took the batch meanwhile
        batch = session.scalar(
            select(func.min(AnnotationAssignment.batch)).where(
                AnnotationAssignment.task_id == task.id,
                AnnotationAssignment.annotator.is_(None),
                AnnotationAssignment.batch.is_not(None),
            )
        )
        if batch is None:
            return None
        res = session.execute(
            update(AnnotationAssignment)
            .where(
                AnnotationAssignment.task_id == task.id,
                AnnotationAssignment.batch == batch,
                AnnotationAssignment.annotator.is_(None),
            )
            .values(annotator=annotator)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount:  # type: ignore[attr-defined]
            session.flush()
            return int(batch)
    return None


def _item_rows(session: Session, task: Task, annotator: str) -> list[AnnotationAssignment]:
    return list(
        session.scalars(
            select(AnnotationAssignment)
            .where(
                AnnotationAssignment.task_id == task.id,
                AnnotationAssignment.annotator == annotator,
            )
            .order_by(
                AnnotationAssignment.overlap.desc(),
                AnnotationAssignment.batch,
                AnnotationAssignment.id,
            )
        )
    )


def _view(session: Session, a: AnnotationAssignment) -> ItemView:
    sample = session.get(Sample, a.sample_id)
    pre = session.get(Annotation, a.prelabel_id) if a.prelabel_id else None
    ann = session.get(Annotation, a.annotation_id) if a.annotation_id else None
    return ItemView(
        assignment_id=a.id,
        sample_id=a.sample_id,
        batch=a.batch,
        overlap=a.overlap,
        done=a.done,
        reason=a.reason,
        width=sample.width if sample else 0,
        height=sample.height if sample else 0,
        prelabel=PreLabel(
            label=pre.label,
            boxes=[Box.model_validate(b) for b in pre.boxes] if pre.boxes else None,
            score=pre.score,
            model_version=pre.model_version,
        )
        if pre
        else None,
        prelabel_id=pre.id if pre else None,
        label=ann.label if ann else None,
        boxes=ann.boxes if ann else None,
        annotation_id=ann.id if ann else None,
        review=ann.review if ann else None,
    )


def my_items(
    session: Session, task_id: str, annotator: str, *, claim: bool = True
) -> list[ItemView]:
    """The annotator's queue (done and open). With ``claim``, a new batch is
    claimed when none of their items is open."""
    task = get_annotation_task(session, task_id)
    _may_work(task, annotator)
    rows = _item_rows(session, task, annotator)
    if claim and not any(not r.done for r in rows):
        if claim_batch(session, task, annotator) is not None:
            rows = _item_rows(session, task, annotator)
    return [_view(session, r) for r in rows]


def next_item(session: Session, task_id: str, annotator: str) -> ItemView | None:
    """The annotator's next open item (claiming a batch if needed), or None when done."""
    for item in my_items(session, task_id, annotator):
        if not item.done:
            return item
    return None


# --------------------------------------------------------------------------- submit


def submit(
    catalog: Catalog,
    session: Session,
    task_id: str,
    annotator: str,
    sample_id: str,
    *,
    label: str | None = None,
    boxes: list[Box] | list[dict[str, Any]] | None = None,
    accept_prelabel: bool = False,
) -> Annotation:
    """Record the annotator's label for one of their items. It becomes the
    sample's current label (superseding the previous one, which is kept)."""
    task = get_annotation_task(session, task_id)
    _may_work(task, annotator)
    a = session.scalar(
        select(AnnotationAssignment).where(
            AnnotationAssignment.task_id == task.id,
            AnnotationAssignment.sample_id == sample_id,
            AnnotationAssignment.annotator == annotator,
        )
    )
    if a is None:
        other = session.scalar(
            select(AnnotationAssignment.id).where(
                AnnotationAssignment.task_id == task.id,
                AnnotationAssignment.sample_id == sample_id,
            )
        )
        if other is None:
            raise NotFound(f"sample {sample_id!r} is not in task {task.id}", field="sample_id")
        raise Forbidden(
            f"sample {sample_id!r} of task {task.id} is not assigned to {annotator!r}",
            field="sample_id",
        )
    kind = _task_kind(task)
    pre = session.get(Annotation, a.prelabel_id) if a.prelabel_id else None
    if accept_prelabel:
        if label is not None or boxes is not None:
            raise InvalidInput(
                "give either accept_prelabel or a label/boxes, not both", field="accept_prelabel"
            )
        if pre is None:
            raise InvalidInput(
                f"sample {sample_id!r} has no pre-label to accept", field="accept_prelabel"
            )
        label, boxes = pre.label, pre.boxes
    if kind == AnnotationKind.CLASSIFICATION:
        if label is None:
            raise InvalidInput("a classification task needs `label`", field="label")
        if boxes is not None:
            raise InvalidInput("a classification task takes no `boxes`", field="boxes")
        _check_label(task, label, "label")
        norm_boxes = None
    else:
        if boxes is None:
            raise InvalidInput("a box task needs `boxes` (may be an empty list)", field="boxes")
        if label is not None:
            raise InvalidInput("a box task takes no `label`; label each box", field="label")
        norm_boxes = _normalize_boxes(task, boxes)

    if task.dataset_id is None:
        raise Conflict(f"the dataset of task {task.id} was deleted")
    row = catalog.annotate(
        task.dataset_id,
        sample_id,
        label=label,
        boxes=norm_boxes,
        annotator=annotator,
        source=AnnotationSource.HUMAN,
        prelabel_id=pre.id if pre else None,
        task_id=task.id,
        session=session,
    )
    a.annotation_id = row.id
    a.done = True
    _refresh_progress(session, task)
    return row


def _refresh_progress(session: Session, task: Task) -> None:
    total, done = session.execute(
        select(
            func.count(AnnotationAssignment.id),
            func.coalesce(func.sum(case((AnnotationAssignment.done.is_(True), 1), else_=0)), 0),
        ).where(AnnotationAssignment.task_id == task.id)
    ).one()
    task.progress = (done / total) if total else 1.0
    task.message = f"{done}/{total} items labeled"
    session.flush()


# --------------------------------------------------------------------------- review


def review_queue(session: Session, task_id: str, *, limit: int = 100) -> list[ItemView]:
    """Done items whose annotation is still pending review."""
    task = get_annotation_task(session, task_id)
    rows = session.scalars(
        select(AnnotationAssignment)
        .join(Annotation, Annotation.id == AnnotationAssignment.annotation_id)
        .where(
            AnnotationAssignment.task_id == task.id,
            AnnotationAssignment.done.is_(True),
            Annotation.review == ReviewState.PENDING,
        )
        .order_by(AnnotationAssignment.id)
        .limit(limit)
    )
    return [_view(session, r) for r in rows]


def review(
    catalog: Catalog,
    session: Session,
    task_id: str,
    annotation_id: int,
    action: ReviewAction,
    *,
    reviewer: str,
    label: str | None = None,
    boxes: list[Box] | list[dict[str, Any]] | None = None,
) -> Annotation:
    """Accept, correct or reject an annotation made in this task.

    - accept: the annotation is marked accepted;
    - correct: a new annotation by the reviewer supersedes it (marked corrected);
    - reject: it is marked rejected, stops being the sample's current label (the
      label it superseded, if any and not rejected, is current again) and the
      item goes back to its annotator.
    Returns the annotation that now stands (the correction for ``correct``)."""
    task = get_annotation_task(session, task_id)
    if task.status.finished:
        raise Conflict(f"task {task.id} is {task.status.value}")
    ann = session.get(Annotation, annotation_id)
    if ann is None or ann.task_id != task.id or ann.source != AnnotationSource.HUMAN:
        raise NotFound(
            f"no annotation {annotation_id} made in task {task.id}", field="annotation_id"
        )
    assignment = session.scalar(
        select(AnnotationAssignment).where(
            AnnotationAssignment.task_id == task.id,
            AnnotationAssignment.annotation_id == ann.id,
        )
    )
    if assignment is None:
        raise Conflict(
            f"annotation {annotation_id} was replaced by a newer one; review that instead",
            field="annotation_id",
        )
    if ann.review != ReviewState.PENDING:
        raise Conflict(
            f"annotation {annotation_id} was already reviewed ({ann.review.value})",
            field="annotation_id",
        )
    if action == ReviewAction.ACCEPT:
        if label is not None or boxes is not None:
            raise InvalidInput("accept takes no label or boxes", field="label")
        ann.review = ReviewState.ACCEPTED
        session.flush()
        return ann
    if action == ReviewAction.REJECT:
        ann.review = ReviewState.REJECTED
        dm = _current_pointer(session, ann.dataset_id, ann.sample_id)
        if dm is not None and dm.current_annotation_id == ann.id:
            prev = session.get(Annotation, ann.supersedes_id) if ann.supersedes_id else None
            while prev is not None and prev.review == ReviewState.REJECTED:
                prev = session.get(Annotation, prev.supersedes_id) if prev.supersedes_id else None
            dm.current_annotation_id = prev.id if prev else None
            dm.label = prev.label if prev else None
        assignment.done = False
        assignment.annotation_id = None
        _refresh_progress(session, task)
        return ann
    # correct
    kind = _task_kind(task)
    if kind == AnnotationKind.CLASSIFICATION:
        if label is None or boxes is not None:
            raise InvalidInput("a correction of a classification needs `label`", field="label")
        _check_label(task, label, "label")
        norm = None
    else:
        if boxes is None or label is not None:
            raise InvalidInput("a correction of boxes needs `boxes`", field="boxes")
        norm = _normalize_boxes(task, boxes)
    ann.review = ReviewState.CORRECTED
    fix = catalog.annotate(
        ann.dataset_id,
        ann.sample_id,
        label=label,
        boxes=norm,
        annotator=reviewer,
        source=AnnotationSource.HUMAN,
        prelabel_id=ann.prelabel_id,
        task_id=task.id,
        session=session,
    )
    fix.review = ReviewState.ACCEPTED
    fix.supersedes_id = ann.id  # on overlap items the current label may be another's
    assignment.annotation_id = fix.id
    session.flush()
    return fix


def close_task(session: Session, task_id: str, *, force: bool = False) -> Task:
    """Mark the task succeeded (all items done) or cancelled (``force`` with open items)."""
    task = get_annotation_task(session, task_id)
    open_items = session.scalar(
        select(func.count(AnnotationAssignment.id)).where(
            AnnotationAssignment.task_id == task.id, AnnotationAssignment.done.is_(False)
        )
    )
    if open_items and not force:
        raise Conflict(
            f"task {task.id} still has {open_items} open item(s); use force to cancel it",
            field="force",
        )
    _transition(task, TaskStatus.CANCELLED if open_items else TaskStatus.SUCCEEDED)
    session.flush()
    return task


# --------------------------------------------------------------------------- summary


def summarize(session: Session, task_id: str) -> TaskSummary:
    task = get_annotation_task(session, task_id)
    ds = session.get(Dataset, task.dataset_id) if task.dataset_id else None
    per: dict[str, dict[str, int]] = defaultdict(lambda: {"assigned": 0, "done": 0})
    total = done = 0
    samples: set[str] = set()
    overlap_samples: set[str] = set()
    unclaimed_batches: set[int] = set()
    for who, batch, is_done, overlap, sid in session.execute(
        select(
            AnnotationAssignment.annotator,
            AnnotationAssignment.batch,
            AnnotationAssignment.done,
            AnnotationAssignment.overlap,
            AnnotationAssignment.sample_id,
        ).where(AnnotationAssignment.task_id == task.id)
    ):
        total += 1
        done += int(bool(is_done))
        samples.add(sid)
        if overlap:
            overlap_samples.add(sid)
        if who is None:
            if batch is not None:
                unclaimed_batches.add(batch)
        else:
            per[who]["assigned"] += 1
            per[who]["done"] += int(bool(is_done))
    return TaskSummary(
        id=task.id,
        title=task.title,
        dataset=ds.name if ds else None,
        kind=_task_kind(task),
        labels=list(task.params.get("labels") or []),
        annotators=list(task.params.get("annotators") or []),
        status=task.status,
        progress=task.progress,
        total=total,
        done=done,
        samples=len(samples),
        overlap_samples=len(overlap_samples),
        unclaimed_batches=len(unclaimed_batches),
        per_annotator=dict(per),
        created_by=task.created_by,
        created_at=task.created_at,
    )


def list_annotation_tasks(
    session: Session, *, dataset: str | None = None, offset: int = 0, limit: int = 50
) -> list[Task]:
    q = select(Task).where(Task.kind == TaskKind.ANNOTATION)
    if dataset is not None:
        q = q.where(Task.dataset_id == _dataset(session, dataset).id)
    return list(session.scalars(q.order_by(Task.created_at.desc()).offset(offset).limit(limit)))


# --------------------------------------------------------------------------- agreement


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two raters over the same items (None if undefined)."""
    if len(a) != len(b):
        raise ValueError("raters must rate the same items")
    n = len(a)
    if n == 0:
        return None
    po = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    pe = sum(ca[c] * cb[c] for c in set(ca) | set(cb)) / (n * n)
    if math.isclose(pe, 1.0):
        return 1.0 if math.isclose(po, 1.0) else None
    return (po - pe) / (1 - pe)


def fleiss_kappa(ratings: list[list[str]]) -> float | None:
    """Fleiss' kappa; ``ratings[i]`` are the categories the raters gave item i
    (every item must have the same number of raters, at least two)."""
    if not ratings:
        return None
    m = len(ratings[0])
    if m < 2 or any(len(r) != m for r in ratings):
        raise ValueError("every item needs the same number (>= 2) of ratings")
    n = len(ratings)
    cats = sorted({c for r in ratings for c in r})
    counts = [Counter(r) for r in ratings]
    p_i = [(sum(c[k] ** 2 for k in cats) - m) / (m * (m - 1)) for c in counts]
    p_bar = sum(p_i) / n
    p_j = [sum(c[k] for c in counts) / (n * m) for k in cats]
    pe = sum(p * p for p in p_j)
    if math.isclose(pe, 1.0):
        return 1.0 if math.isclose(p_bar, 1.0) else None
    return (p_bar - pe) / (1 - pe)


def _iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    ix = max(0.0, min(a["x2"], b["x2"]) - max(a["x1"], b["x1"]))
    iy = max(0.0, min(a["y2"], b["y2"]) - max(a["y1"], b["y1"]))
    inter = ix * iy
    union = (
        (a["x2"] - a["x1"]) * (a["y2"] - a["y1"])
        + (b["x2"] - b["x1"]) * (b["y2"] - b["y1"])
        - inter
    )
    return inter / union if union > 0 else 0.0


def boxes_agree(a: list[dict[str, Any]], b: list[dict[str, Any]], iou: float = 0.5) -> bool:
    """True when the two box sets match one to one (same label, IoU >= ``iou``)."""
    if len(a) != len(b):
        return False
    left = list(b)
    for box in sorted(a, key=lambda x: -(x["x2"] - x["x1"]) * (x["y2"] - x["y1"])):
        best, best_iou = None, iou
        for j, other in enumerate(left):
            if other["label"] == box["label"]:
                v = _iou(box, other)
                if v >= best_iou:
                    best, best_iou = j, v
        if best is None:
            return False
        left.pop(best)
    return True


def agreement(session: Session, task_id: str) -> Agreement:
    """Inter-annotator agreement over the task's overlap sample."""
    task = get_annotation_task(session, task_id)
    kind = _task_kind(task)
    by_sample: dict[str, dict[str, Annotation]] = defaultdict(dict)
    rows = session.execute(
        select(AnnotationAssignment.sample_id, AnnotationAssignment.annotator, Annotation)
        .join(Annotation, Annotation.id == AnnotationAssignment.annotation_id)
        .where(
            AnnotationAssignment.task_id == task.id,
            AnnotationAssignment.overlap.is_(True),
            AnnotationAssignment.done.is_(True),
        )
    )
    for sid, who, ann in rows:
        by_sample[sid][who] = ann
    items = {s: r for s, r in by_sample.items() if len(r) >= 2}

    def signature(ann: Annotation) -> str:
        if kind == AnnotationKind.CLASSIFICATION:
            return ann.label or ""
        return "|".join(sorted(b["label"] for b in ann.boxes or [])) or "<empty>"

    def agree(x: Annotation, y: Annotation) -> bool:
        if kind == AnnotationKind.CLASSIFICATION:
            return x.label == y.label
        return boxes_agree(x.boxes or [], y.boxes or [])

    raters = sorted({w for r in items.values() for w in r})
    pair_scores = []
    item_scores = []
    for r in items.values():
        anns = list(r.values())
        pairs = list(itertools.combinations(anns, 2))
        item_scores.append(sum(agree(x, y) for x, y in pairs) / len(pairs))
    for ra, rb in itertools.combinations(raters, 2):
        both = [r for r in items.values() if ra in r and rb in r]
        if not both:
            continue
        raw = sum(agree(r[ra], r[rb]) for r in both) / len(both)
        kappa = cohen_kappa([signature(r[ra]) for r in both], [signature(r[rb]) for r in both])
        pair_scores.append(PairAgreement(a=ra, b=rb, items=len(both), raw=raw, cohen_kappa=kappa))

    fleiss = None
    if items:
        modal = Counter(len(r) for r in items.values()).most_common(1)[0][0]
        same = [r for r in items.values() if len(r) == modal]
        fleiss = fleiss_kappa([[signature(a) for a in r.values()] for r in same])
    return Agreement(
        task_id=task.id,
        kind=kind,
        items=len(items),
        raters=len(raters),
        raw_agreement=(sum(item_scores) / len(item_scores)) if item_scores else None,
        fleiss_kappa=fleiss,
        pairs=pair_scores,
    )


__all__ = [
    "Agreement",
    "AnnotationTaskSpec",
    "Box",
    "ItemView",
    "PairAgreement",
    "PreLabel",
    "ReviewAction",
    "TaskSummary",
    "agreement",
    "boxes_agree",
    "claim_batch",
    "close_task",
    "cohen_kappa",
    "create_annotation_task",
    "fleiss_kappa",
    "get_annotation_task",
    "list_annotation_tasks",
    "my_items",
    "next_item",
    "review",
    "review_queue",
    "submit",
    "summarize",
]

"""Annotations: one label by id, a sample's label history in a dataset, and
direct labeling of a sample (outside an annotation task). Labels are appended,
never edited: each new one supersedes the sample's current label."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.deps import AnnotatorUser, CatalogDep, SessionDep, ViewerUser
from cloud.api.errors import ERROR_RESPONSES
from cloud.catalog.annotation import Box
from cloud.catalog.models import Annotation, AnnotationKind, AnnotationSource, ReviewState
from cloud.errors import InvalidInput, NotFound

router = APIRouter(tags=["annotations"], responses=ERROR_RESPONSES)

DatasetPath = Path(min_length=1, max_length=128, description="dataset name")
SampleIdPath = Path(pattern=r"^[0-9a-f]{64}$", description="sample id (sha256)")


class AnnotationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    sample_id: str
    kind: AnnotationKind
    label: str | None
    boxes: list[dict] | None
    source: AnnotationSource
    annotator: str
    prelabel_id: int | None
    supersedes_id: int | None
    task_id: str | None
    review: ReviewState
    model_version: str | None
    score: float | None
    created_at: datetime


class AnnotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str | None = Field(default=None, min_length=1, max_length=128)
    boxes: list[Box] | None = Field(default=None, max_length=1000)


@router.get("/annotations/{annotation_id}", response_model=AnnotationOut)
def get_annotation(
    _: ViewerUser, session: SessionDep, annotation_id: int = Path(ge=1, le=2**62)
) -> AnnotationOut:
    row = session.get(Annotation, annotation_id)
    if row is None:
        raise NotFound(f"no annotation {annotation_id}", field="annotation_id")
    return AnnotationOut.model_validate(row)


@router.get("/datasets/{name}/samples/{sample_id}/annotations", response_model=list[AnnotationOut])
def annotation_history(
    _: ViewerUser, catalog: CatalogDep, name: str = DatasetPath, sample_id: str = SampleIdPath
) -> list[AnnotationOut]:
    """Every label of the sample in this dataset, oldest first (nothing is overwritten)."""
    catalog.sample_view(name, sample_id)  # 404 when not a member
    return [AnnotationOut.model_validate(a) for a in catalog.annotation_history(name, sample_id)]


@router.post(
    "/datasets/{name}/samples/{sample_id}/annotations",
    response_model=AnnotationOut,
    status_code=201,
)
def annotate(
    body: AnnotateIn,
    user: AnnotatorUser,
    catalog: CatalogDep,
    name: str = DatasetPath,
    sample_id: str = SampleIdPath,
) -> AnnotationOut:
    """Label one sample directly (outside an annotation task)."""
    if (body.label is None) == (body.boxes is None):
        raise InvalidInput("give exactly one of `label` or `boxes`", field="label")
    row = catalog.annotate(
        name,
        sample_id,
        label=body.label,
        boxes=[b.model_dump() for b in body.boxes] if body.boxes is not None else None,
        annotator=user.name,
    )
    return AnnotationOut.model_validate(row)

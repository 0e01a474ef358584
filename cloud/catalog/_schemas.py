"""Pydantic models at the catalog's boundary (inputs and read views)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cloud.catalog.models import AnnotationKind, AnnotationSource, Split

T = TypeVar("T")


class Box(BaseModel):
    """An axis-aligned box in pixels of the sample image."""

    model_config = ConfigDict(extra="forbid")
    x1: float
    y1: float
    x2: float
    y2: float
    label: str = Field(min_length=1, max_length=128)
    score: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        if not (self.x2 > self.x1 and self.y2 > self.y1):
            raise ValueError("box needs x2 > x1 and y2 > y1")
        if self.x1 < 0 or self.y1 < 0:
            raise ValueError("box corners must not be negative")
        return self


class SampleIn(BaseModel):
    """A sample whose bytes are already in the blob store, with its provenance."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the blob")
    media_type: str = "image/jpeg"
    width: int = Field(default=0, ge=0)
    height: int = Field(default=0, ge=0)
    size: int = Field(default=0, ge=0)
    phash: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")
    source: str = ""
    frame_index: int | None = Field(default=None, ge=0)
    camera: str | None = Field(default=None, max_length=128)
    device: str | None = Field(default=None, max_length=128)
    model_version: str | None = Field(default=None, max_length=64)
    captured_at: datetime | None = None
    reason: str | None = None
    selector: str | None = Field(default=None, max_length=64)
    scores: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, max_length=128)


class AddResult(BaseModel):
    """What ``Catalog.add_samples`` did: ids in input order, new memberships."""

    sample_ids: list[str]
    added: int = 0  # new members of the dataset
    existing: int = 0  # already members (re-import)
    new_blobs_rows: int = 0  # sample rows created (not known to any dataset before)


class SampleView(BaseModel):
    """A member of a dataset with its provenance and current label."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    media_type: str
    width: int
    height: int
    size: int
    phash: str | None = None
    source: str
    frame_index: int | None = None
    camera: str | None = None
    device: str | None = None
    model_version: str | None = None
    captured_at: datetime | None = None
    reason: str | None = None
    selector: str | None = None
    scores: dict[str, Any] = Field(default_factory=dict)
    pool: str
    split: Split | None = None
    added_at: datetime
    label: str | None = None
    annotation_id: int | None = None
    annotation_kind: AnnotationKind | None = None
    annotation_source: AnnotationSource | None = None
    annotator: str | None = None
    boxes: list[dict[str, Any]] | None = None


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    offset: int
    limit: int
    next_cursor: str | None = Field(
        default=None, description="pass as `after` for the next page (keyset paging)"
    )


class DatasetStats(BaseModel):
    id: int
    name: str
    description: str
    labels: list[str]
    created_at: datetime
    created_by: str
    samples: int
    labeled: int
    per_label: dict[str, int]
    per_pool: dict[str, int]
    per_split: dict[str, int]
    versions: int
    latest_version: int | None


class VersionItem(BaseModel):
    sample_id: str
    split: Split | None
    annotation_id: int | None
    label: str | None
    boxes: list[dict[str, Any]] | None
    kind: AnnotationKind | None
    media_type: str
    width: int
    height: int
    source: str


class DatasetName(BaseModel):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class LabelName(BaseModel):
    label: str

    @field_validator("label")
    @classmethod
    def _clean(cls, v: str) -> str:
        v = v.strip()
        if not v or len(v) > 128 or any(c in v for c in "\r\n\t"):
            raise ValueError(f"invalid label {v!r}: 1-128 characters, no tabs or newlines")
        return v

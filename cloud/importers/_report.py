"""Reports returned by imports and exports."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SkippedFile(BaseModel):
    file: str
    reason: str


class ImportReport(BaseModel):
    """What one ``import_path`` call did. Nothing is written unless it returns."""

    dataset: str
    dataset_id: int
    kind: str = Field(description="image | folder | video | coco | yolo | labelstudio, zip:<kind>")
    created: bool = Field(description="the dataset was created by this import")
    files_seen: int = 0
    images_read: int = 0
    frames_sampled: int = 0
    duplicates_removed: int = Field(default=0, description="near-duplicate video frames dropped")
    added: int = Field(default=0, description="samples new to the dataset")
    existing: int = Field(default=0, description="samples already in the dataset (re-import)")
    skipped: list[SkippedFile] = Field(default_factory=list)
    annotations_added: int = 0
    annotations_unchanged: int = 0
    labels_added: list[str] = Field(default_factory=list)
    task_id: str | None = None
    seconds: float = 0.0


class ExportReport(BaseModel):
    dataset: str
    version: int | None
    format: str
    out: str
    images: int
    labeled: int
    annotations: int

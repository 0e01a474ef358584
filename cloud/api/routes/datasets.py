"""Datasets: list, create, stats, labels, versions, samples of a dataset,
direct annotation of a sample, uploads and exports."""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime
from pathlib import Path as FsPath
from typing import Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from starlette.background import BackgroundTask

from cloud.api._paging import page_samples
from cloud.api.deps import (
    AnnotatorUser,
    CatalogDep,
    OperatorUser,
    SessionDep,
    SettingsDep,
    ViewerUser,
)
from cloud.api.errors import ERROR_RESPONSES
from cloud.catalog import DatasetStats, Page, SampleView
from cloud.catalog.models import Dataset, DatasetSample, Split

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=ERROR_RESPONSES)

DatasetPath = Path(min_length=1, max_length=128, description="dataset name")
SampleIdPath = Path(pattern=r"^[0-9a-f]{64}$", description="sample id (sha256)")


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    labels: list[str] = Field(default_factory=list, max_length=1000)
    description: str = Field(default="", max_length=10_000)


class DatasetOut(BaseModel):
    id: int
    name: str
    description: str
    labels: list[str]
    created_at: datetime
    created_by: str
    samples: int
    labeled: int


class LabelsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[str] = Field(min_length=1, max_length=1000)


class VersionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field(default="", max_length=10_000)


class VersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    number: int
    note: str
    labels: list[str]
    sample_count: int
    labeled_count: int
    created_at: datetime
    created_by: str
    task_id: str | None


@router.get("", response_model=list[DatasetOut])
def list_datasets(_: ViewerUser, session: SessionDep) -> list[DatasetOut]:
    m = DatasetSample
    counts = {
        ds_id: (n, lab)
        for ds_id, n, lab in session.execute(
            select(m.dataset_id, func.count(), func.count(m.current_annotation_id)).group_by(
                m.dataset_id
            )
        )
    }
    out = []
    for ds in session.scalars(select(Dataset).order_by(Dataset.name)):
        n, lab = counts.get(ds.id, (0, 0))
        out.append(
            DatasetOut(
                id=ds.id,
                name=ds.name,
                description=ds.description,
                labels=list(ds.labels or []),
                created_at=ds.created_at,
                created_by=ds.created_by,
                samples=n,
                labeled=lab,
            )
        )
    return out


@router.post("", response_model=DatasetStats, status_code=201)
def create_dataset(body: DatasetCreate, user: AnnotatorUser, catalog: CatalogDep) -> DatasetStats:
    catalog.create_dataset(
        body.name, labels=body.labels, description=body.description, created_by=user.name
    )
    return catalog.dataset_stats(body.name)


@router.get("/{name}", response_model=DatasetStats)
def get_dataset(_: ViewerUser, catalog: CatalogDep, name: str = DatasetPath) -> DatasetStats:
    return catalog.dataset_stats(name)


@router.post("/{name}/labels", response_model=DatasetStats)
def add_labels(
    body: LabelsIn, _: AnnotatorUser, catalog: CatalogDep, name: str = DatasetPath
) -> DatasetStats:
    """Append class names (existing ones kept, order preserved)."""
    catalog.add_labels(name, body.labels)
    return catalog.dataset_stats(name)


@router.get("/{name}/samples", response_model=Page[SampleView])
def list_samples(
    _: ViewerUser,
    catalog: CatalogDep,
    name: str = DatasetPath,
    label: str | None = Query(default=None, max_length=128),
    source: str | None = Query(default=None, max_length=1000, description="prefix match"),
    pool: str | None = Query(default=None, max_length=64),
    camera: str | None = Query(default=None, max_length=128),
    device: str | None = Query(default=None, max_length=128),
    split: Split | None = None,
    labeled: bool | None = None,
    offset: int = Query(default=0, ge=0, le=10**9),
    limit: int = Query(default=50, ge=1, le=500),
    after: str | None = Query(default=None, max_length=200, description="keyset cursor"),
) -> Page[SampleView]:
    return page_samples(
        catalog,
        name,
        label=label,
        source=source,
        pool=pool,
        camera=camera,
        device=device,
        split=split,
        labeled=labeled,
        offset=offset,
        limit=limit,
        after=after,
    )


@router.get("/{name}/samples/{sample_id}", response_model=SampleView)
def get_sample(
    _: ViewerUser, catalog: CatalogDep, name: str = DatasetPath, sample_id: str = SampleIdPath
) -> SampleView:
    return catalog.sample_view(name, sample_id)


@router.get("/{name}/versions", response_model=list[VersionOut])
def list_versions(_: ViewerUser, catalog: CatalogDep, name: str = DatasetPath) -> list[VersionOut]:
    return [VersionOut.model_validate(v) for v in catalog.list_versions(name)]


@router.post("/{name}/versions", response_model=VersionOut, status_code=201)
def create_version(
    body: VersionIn, user: OperatorUser, catalog: CatalogDep, name: str = DatasetPath
) -> VersionOut:
    """Freeze membership + current labels as the next immutable version."""
    return VersionOut.model_validate(
        catalog.create_version(name, note=body.note, created_by=user.name)
    )


@router.get(
    "/{name}/export",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}
    },
)
def export(
    _: ViewerUser,
    catalog: CatalogDep,
    settings: SettingsDep,
    name: str = DatasetPath,
    format: Literal["coco", "yolo", "csv"] = "coco",
    version: int | None = Query(default=None, ge=1, le=10**9, description="default: working set"),
) -> FileResponse:
    """The dataset (or one version) exported as COCO, YOLO or CSV, in a zip."""
    from cloud.importers import export_dataset

    ds = catalog.get_dataset(name)
    root = settings.data_dir / "exports"
    root.mkdir(parents=True, exist_ok=True)
    work = FsPath(tempfile.mkdtemp(prefix="export-", dir=root))
    try:
        export_dataset(catalog, ds.name, format, work / "out", version)
        archive = shutil.make_archive(str(work / ds.name), "zip", root_dir=work / "out")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    suffix = f"-v{version}" if version else ""
    return FileResponse(
        archive,
        media_type="application/zip",
        filename=f"{ds.name}{suffix}-{format}.zip",
        background=BackgroundTask(shutil.rmtree, work, True),
    )

"""Samples by content id: metadata, image bytes (hash-verified), thumbnails."""

from __future__ import annotations

import io
import os
import tempfile
from datetime import datetime
from pathlib import Path as FsPath

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from cloud.api.deps import CatalogDep, SessionDep, SettingsDep, ViewerUser
from cloud.api.errors import ERROR_RESPONSES
from cloud.catalog.models import Dataset, DatasetSample, Sample
from cloud.errors import NotFound

router = APIRouter(prefix="/samples", tags=["samples"], responses=ERROR_RESPONSES)

SampleIdPath = Path(pattern=r"^[0-9a-f]{64}$", description="sample id (sha256 of the bytes)")
IMAGE_RESPONSES: dict[int | str, dict] = {
    200: {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}
}


class SampleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    media_type: str
    width: int
    height: int
    size: int
    phash: str | None
    source: str
    frame_index: int | None
    camera: str | None
    device: str | None
    model_version: str | None
    captured_at: datetime | None
    reason: str | None
    selector: str | None
    created_at: datetime


class SampleDetail(SampleOut):
    datasets: list[str]


def _sample(session, sample_id: str) -> Sample:  # type: ignore[no-untyped-def]
    s = session.get(Sample, sample_id)
    if s is None:
        raise NotFound(f"no sample {sample_id}", field="sample_id")
    return s


@router.get("/{sample_id}", response_model=SampleDetail)
def get_sample(_: ViewerUser, session: SessionDep, sample_id: str = SampleIdPath) -> SampleDetail:
    s = _sample(session, sample_id)
    names = list(
        session.scalars(
            select(Dataset.name)
            .join(DatasetSample, DatasetSample.dataset_id == Dataset.id)
            .where(DatasetSample.sample_id == sample_id)
            .order_by(Dataset.name)
        )
    )
    return SampleDetail(**SampleOut.model_validate(s).model_dump(), datasets=names)


def _etag_matches(request: Request, etag: str) -> bool:
    return request.headers.get("if-none-match", "").strip() in (etag, f"W/{etag}")


@router.get("/{sample_id}/image", response_class=Response, responses=IMAGE_RESPONSES)
def image(
    request: Request,
    _: ViewerUser,
    session: SessionDep,
    catalog: CatalogDep,
    sample_id: str = SampleIdPath,
) -> Response:
    """The original bytes (verified against the id); cacheable forever."""
    s = _sample(session, sample_id)
    etag = f'"{sample_id}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
    if _etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    data = catalog.blobs.get(sample_id)
    return Response(data, media_type=s.media_type, headers=headers)


@router.get("/{sample_id}/thumbnail", response_class=Response, responses=IMAGE_RESPONSES)
def thumbnail(
    request: Request,
    _: ViewerUser,
    session: SessionDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    sample_id: str = SampleIdPath,
    size: int = Query(default=192, ge=16, le=1024),
) -> Response:
    """A JPEG at most ``size`` pixels on its longer side (cached on disk)."""
    _sample(session, sample_id)
    etag = f'"{sample_id}-{size}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
    if _etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    cache = settings.data_dir / "cache" / "thumbs" / sample_id[:2] / f"{sample_id}_{size}.jpg"
    if not cache.exists():
        _make_thumbnail(catalog.blobs.get(sample_id), size, cache)
    return FileResponse(cache, media_type="image/jpeg", headers=headers)


def _make_thumbnail(data: bytes, size: int, out: FsPath) -> None:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im)
        im.thumbnail((size, size))
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, out)
    except BaseException:
        FsPath(tmp).unlink(missing_ok=True)
        raise

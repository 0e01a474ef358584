"""POST /datasets/{name}/uploads: an image, a video, a zip (or several files)
as multipart/form-data or a raw body, imported with :mod:`cloud.importers`.

The size limit (``CITYBRAIN_MAX_UPLOAD_MB``) is enforced while the body is
read: a request whose Content-Length is over is refused before reading, and a
body that grows past the limit (chunked, or a lying Content-Length) is cut off
with 413 as soon as it does. Files are streamed to a temporary directory under
the data dir, removed afterwards whatever happens.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from pathlib import Path as FsPath
from typing import Any

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from cloud.api.deps import AnnotatorUser
from cloud.api.errors import ERROR_RESPONSES, ErrorBody
from cloud.errors import InvalidInput, PayloadTooLarge

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=ERROR_RESPONSES)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_BY_TYPE = {
    "application/zip": "upload.zip",
    "application/x-zip-compressed": "upload.zip",
    "image/jpeg": "upload.jpg",
    "image/png": "upload.png",
    "image/webp": "upload.webp",
    "image/bmp": "upload.bmp",
    "image/gif": "upload.gif",
    "image/tiff": "upload.tif",
    "video/mp4": "upload.mp4",
    "video/x-msvideo": "upload.avi",
    "video/avi": "upload.avi",
    "video/quicktime": "upload.mov",
    "video/x-matroska": "upload.mkv",
    "video/webm": "upload.webm",
    "application/json": "upload.json",
}

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more images / videos / zips / COCO JSON",
                        },
                        "labels": {
                            "type": "string",
                            "format": "binary",
                            "description": "optional CSV `path,label`",
                        },
                    },
                    "required": ["file"],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def safe_filename(name: str | None, fallback: str) -> str:
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _SAFE.sub("_", base).strip("._")
    return base[:200] or fallback


class _LimitedReceive:
    """An ASGI receive that counts body bytes and raises PayloadTooLarge once over."""

    def __init__(self, receive: Any, limit: int) -> None:
        self._receive = receive
        self.limit = limit
        self.total = 0

    async def __call__(self) -> dict:
        message = await self._receive()
        if message["type"] == "http.request":
            self.total += len(message.get("body", b""))
            if self.total > self.limit:
                raise PayloadTooLarge(
                    f"upload is larger than the limit of {self.limit // (1 << 20)} MiB "
                    "(CITYBRAIN_MAX_UPLOAD_MB)",
                    field="body",
                )
        return message


async def receive_upload(
    request: Request, dest: FsPath, limit: int, filename: str | None
) -> tuple[list[FsPath], FsPath | None]:
    """Stream the request's file(s) into ``dest``; returns (files, labels csv)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(
                    f"upload of {declared} bytes is over the limit of {limit // (1 << 20)} MiB "
                    "(CITYBRAIN_MAX_UPLOAD_MB)",
                    field="body",
                )
        except ValueError:
            raise InvalidInput("invalid Content-Length header", field="content-length") from None
    limited = Request(request.scope, _LimitedReceive(request.receive, limit))
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    files: list[FsPath] = []
    labels: FsPath | None = None
    try:
        if ctype == "multipart/form-data":
            form = await limited.form(max_files=1000, max_fields=10)
            try:
                for key, value in form.multi_items():
                    if not isinstance(value, UploadFile):
                        continue
                    if key == "labels":
                        labels = dest / "labels.csv"
                        target = labels
                    elif key == "file":
                        sub = dest / "files"
                        sub.mkdir(exist_ok=True)
                        name = safe_filename(value.filename, f"file{len(files)}")
                        target = sub / name
                        n = 1
                        while target.exists():
                            target = sub / f"{n}_{name}"
                            n += 1
                        files.append(target)
                    else:
                        raise InvalidInput(
                            f"unexpected form part {key!r}; send `file` (and optional `labels`)",
                            field=key,
                        )
                    with open(target, "wb") as out:
                        await run_in_threadpool(shutil.copyfileobj, value.file, out, 1 << 20)
            finally:
                await form.close()
        else:
            name = filename or _BY_TYPE.get(ctype)
            if not name:
                raise InvalidInput(
                    "raw upload: pass ?filename=NAME.ext or a known Content-Type "
                    "(image/*, video/*, application/zip), or use multipart/form-data",
                    field="filename",
                )
            sub = dest / "files"
            sub.mkdir(exist_ok=True)
            target = sub / safe_filename(name, "upload.bin")
            with open(target, "wb") as out:
                async for chunk in limited.stream():
                    out.write(chunk)
            if target.stat().st_size == 0:
                raise InvalidInput("empty upload body", field="body")
            files.append(target)
    except ClientDisconnect:
        raise InvalidInput("client disconnected before the upload finished", field="body") from None
    except AssertionError as e:  # starlette's multipart parser asserts on garbage
        raise InvalidInput(f"malformed multipart body ({e})", field="body") from None
    if not files:
        raise InvalidInput("no `file` part in the upload", field="file")
    return files, labels


@router.post(
    "/{name}/uploads",
    status_code=201,
    openapi_extra=UPLOAD_BODY,
    responses={413: {"model": ErrorBody, "description": "over CITYBRAIN_MAX_UPLOAD_MB"}},
)
async def upload(
    request: Request,
    user: AnnotatorUser,
    name: str = Path(min_length=1, max_length=128, description="dataset name"),
    filename: str | None = Query(
        default=None, max_length=255, description="name of a raw-body upload (its suffix matters)"
    ),
) -> dict[str, Any]:
    """Upload and import into the dataset (created if missing). The import is
    all-or-nothing; the report lists what was skipped and why."""
    from cloud.importers import import_path

    settings = request.app.state.settings
    catalog = request.app.state.catalog
    limit = settings.max_upload_mb * (1 << 20)
    root = settings.data_dir / "uploads"
    root.mkdir(parents=True, exist_ok=True)
    dest = FsPath(tempfile.mkdtemp(prefix=f"{uuid.uuid4().hex[:8]}-", dir=root))
    try:
        files, labels = await receive_upload(request, dest, limit, filename)
        path = files[0] if len(files) == 1 else dest / "files"
        report = await run_in_threadpool(
            _import_as_task, import_path, settings, catalog, path, name, labels, user.name
        )
        return report.model_dump(mode="json")
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def _import_as_task(import_path, settings, catalog, path, name, labels, who):  # type: ignore[no-untyped-def]
    """Run the import recorded as an ``import`` task: progress goes to the task
    row (at most twice a second) and live to the events channel; a failed
    import leaves a failed task naming the error (and nothing else)."""
    from cloud.api.routes.events import publish_event
    from cloud.catalog.db import transaction
    from cloud.catalog.models import Dataset, Task, TaskKind, TaskStatus, utcnow
    from cloud.errors import CitybrainError
    from cloud.jobs import task_event, throttled_progress, transition

    with transaction(catalog.sessions) as s:
        ds_id = s.scalar(select(Dataset.id).where(Dataset.name == name))
        task = Task(
            kind=TaskKind.IMPORT,
            status=TaskStatus.QUEUED,
            title=f"upload {path.name} into {name}",
            dataset_id=ds_id,
            params={"dataset": name, "file": path.name, "via": "upload"},
            created_by=who,
        )
        s.add(task)
        s.flush()
        task_id = task.id
    transition(
        catalog.sessions,
        task_id,
        TaskStatus.QUEUED,
        TaskStatus.RUNNING,
        attempts=1,
        started_at=utcnow(),
        heartbeat_at=utcnow(),
    )
    publish_event(
        settings, task_event(task_id, TaskKind.IMPORT, TaskStatus.RUNNING, 0.0, "receiving")
    )
    progress = throttled_progress(
        catalog.sessions,
        task_id,
        then=lambda fraction, message: publish_event(
            settings, task_event(task_id, TaskKind.IMPORT, TaskStatus.RUNNING, fraction, message)
        ),
    )

    try:
        report = import_path(
            catalog,
            path,
            name,
            labels_csv=labels,
            created_by=who,
            task_id=task_id,
            progress=progress,
        )
    except BaseException as e:
        msg = e.message if isinstance(e, CitybrainError) else f"{type(e).__name__}: {e}"
        transition(
            catalog.sessions,
            task_id,
            TaskStatus.RUNNING,
            TaskStatus.FAILED,
            error=msg,
            message="failed",
        )
        publish_event(settings, task_event(task_id, TaskKind.IMPORT, TaskStatus.FAILED, 0.0, msg))
        raise
    report.task_id = task_id
    done = f"{report.added} added, {report.existing} already there, {len(report.skipped)} skipped"
    transition(
        catalog.sessions,
        task_id,
        TaskStatus.RUNNING,
        TaskStatus.SUCCEEDED,
        progress=1.0,
        message=done,
        result=report.model_dump(mode="json"),
        dataset_id=report.dataset_id,
    )
    publish_event(settings, task_event(task_id, TaskKind.IMPORT, TaskStatus.SUCCEEDED, 1.0, done))
    return report

"""HTTP API of the store (a FastAPI ``APIRouter``, mounted under
``/api/v1/store`` by the API) and resumable artifact downloads
(Range, ETag, If-None-Match, If-Range)."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ._errors import StoreError
from ._store import AlgorithmStore, VersionInfo

_STATUS = {"invalid": 422, "not_found": 404, "conflict": 409, "forbidden": 403, "unavailable": 503}
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 1 << 20
#: rollout ids are SQLite integers: larger ones are invalid input, not a server error
_ROLLOUT_ID = Path(ge=1, le=2**62)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromoteBody(_Body):
    version: str = Field(min_length=1)
    reason: str = ""


class RollbackBody(_Body):
    version: str | None = None
    reason: str = ""


class RolloutBody(_Body):
    algorithm: str = Field(min_length=1)
    version: str = Field(min_length=1)
    channel: str = Field(min_length=1)
    groups: list[dict[str, Any]] = Field(min_length=1)
    devices: list[str] | None = None
    success_gate: float = 0.9
    error_gate: float = 0.2
    reason: str = ""


class ReasonBody(_Body):
    reason: str = ""


def _http_error(e: StoreError) -> HTTPException:
    detail: dict[str, Any] = {"error": e.kind, "message": e.message}
    if e.field:
        detail["field"] = e.field
    return HTTPException(status_code=_STATUS.get(e.kind, 400), detail=detail)


def _version_json(v: VersionInfo, *, full: bool = False) -> dict[str, Any]:
    m = v.manifest
    out: dict[str, Any] = {
        "version": v.version,
        "task": m.task.value,
        "labels": m.labels,
        "channels": list(v.channels),
        "metrics": m.metrics,
        "targets": sorted(set(m.cost) | {e.target for e in m.engines}),
        "cost": {k: c.model_dump() for k, c in m.cost.items()},
        "engines": [e.model_dump() for e in m.engines],
        "scenes": m.scenes,
        "detects": m.detects,
        "lineage": m.lineage.model_dump(),
        "artifact": {"sha256": v.sha256, "size": v.size, "url": f"artifacts/{v.sha256}"},
        "published_at": v.published_at.isoformat(),
    }
    if full:
        out["manifest"] = m.model_dump(mode="json", by_alias=True)
    return out


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """(start, end inclusive), None (serve all), or "unsatisfiable"."""
    if not header:
        return None
    m = _RANGE_RE.match(header.strip())
    if not m:
        return None  # multiple or malformed ranges: ignored, the whole body is sent
    a, b = m.groups()
    if a == "" and b == "":
        return None
    if a == "":
        n = int(b)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(a)
    end = size - 1 if b == "" else min(int(b), size - 1)
    if start >= size or (b != "" and int(b) < start):
        return "unsatisfiable"
    return start, end


def _etag_matches(header: str, etag: str) -> bool:
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags or f"W/{etag}" in tags


async def _body(path: str, start: int, end: int) -> AsyncIterator[bytes]:
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = start
        while pos <= end:
            # the file is an immutable, usually page-cached blob: pread is short
            data = os.pread(fd, min(CHUNK, end - pos + 1), pos)
            if not data:
                break
            pos += len(data)
            yield data
    finally:
        os.close(fd)


def make_router(
    store: AlgorithmStore, *, require_operator: Callable[..., Any] | None = None
) -> APIRouter:
    """The store's API. ``require_operator`` is a FastAPI dependency guarding
    every state-changing route (promote, rollback, rollouts); None = unguarded."""
    router = APIRouter(tags=["store"])
    guard = [Depends(require_operator)] if require_operator is not None else []

    def call(fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except StoreError as e:
            raise _http_error(e) from None

    @router.get("/algorithms")
    def list_algorithms() -> list[dict[str, Any]]:
        return call(store.algorithms)

    @router.get("/algorithms/{algorithm}")
    def show_algorithm(algorithm: str) -> dict[str, Any]:
        versions = call(store.versions, algorithm)
        return {
            "id": algorithm,
            "channels": call(store.channels, algorithm),
            "versions": [_version_json(v) for v in versions],
            "rollouts": [r.model_dump(mode="json") for r in call(store.rollouts, algorithm)],
        }

    @router.get("/algorithms/{algorithm}/versions/{version}")
    def show_version(algorithm: str, version: str) -> dict[str, Any]:
        return _version_json(call(store.version, algorithm, version), full=True)

    @router.get("/algorithms/{algorithm}/transitions")
    def transitions(algorithm: str) -> list[dict[str, Any]]:
        return [t.model_dump(mode="json") for t in call(store.transitions, algorithm)]

    @router.post("/algorithms/{algorithm}/channels/{channel}/promote", dependencies=guard)
    def promote(algorithm: str, channel: str, body: PromoteBody) -> dict[str, Any]:
        previous = call(store.promote, algorithm, body.version, channel, reason=body.reason)
        return {"channel": channel, "version": body.version, "previous": previous}

    @router.post("/algorithms/{algorithm}/channels/{channel}/rollback", dependencies=guard)
    def rollback(algorithm: str, channel: str, body: RollbackBody) -> dict[str, Any]:
        version = call(store.rollback, algorithm, channel, body.version, reason=body.reason)
        return {"channel": channel, "version": version}

    @router.get("/rollouts")
    def list_rollouts(algorithm: str | None = None) -> list[dict[str, Any]]:
        return [r.model_dump(mode="json") for r in call(store.rollouts, algorithm)]

    @router.get("/rollouts/{rollout_id}")
    def show_rollout(rollout_id: int = _ROLLOUT_ID) -> dict[str, Any]:
        return call(store.rollout, rollout_id).model_dump(mode="json")

    @router.post("/rollouts", dependencies=guard, status_code=201)
    def start_rollout(body: RolloutBody) -> dict[str, Any]:
        r = call(
            store.start_rollout,
            body.algorithm,
            body.version,
            body.channel,
            body.groups,
            devices=body.devices,
            success_gate=body.success_gate,
            error_gate=body.error_gate,
            reason=body.reason,
        )
        return r.model_dump(mode="json")

    def _make_action(name: str) -> Callable[..., dict[str, Any]]:
        # a closure, not a default argument: FastAPI would expose that as a query parameter
        def _action(body: ReasonBody, rollout_id: int = _ROLLOUT_ID) -> dict[str, Any]:
            fn = getattr(store, f"{name}_rollout")
            return call(fn, rollout_id, reason=body.reason).model_dump(mode="json")

        return _action

    for action in ("pause", "resume", "abort"):
        router.add_api_route(
            f"/rollouts/{{rollout_id}}/{action}",
            _make_action(action),
            methods=["POST"],
            dependencies=guard,
            name=f"{action}_rollout",
        )

    @router.api_route("/artifacts/{sha256}", methods=["GET", "HEAD"])
    def artifact(sha256: str, request: Request) -> Response:
        path, size = call(store.published_artifact, sha256)
        etag = f'"{sha256}"'
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Cache-Control": "public, max-age=31536000, immutable",
        }
        inm = request.headers.get("if-none-match")
        if inm and _etag_matches(inm, etag):
            return Response(status_code=304, headers=headers)
        rng = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if rng and if_range is not None and if_range.strip() != etag:
            rng = None  # the client's partial copy is of another artifact: send it whole
        parsed = _parse_range(rng, size)
        if parsed == "unsatisfiable":
            return Response(
                status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"}
            )
        if parsed is None:
            start, end, status = 0, size - 1, 200
        else:
            assert isinstance(parsed, tuple)
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(end - start + 1)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers, media_type="application/x-tar")
        return StreamingResponse(
            _body(str(path), start, end),
            status_code=status,
            headers=headers,
            media_type="application/x-tar",
        )

    return router

"""Console routes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel
from sqlalchemy import func, select

from cloud.api._paging import page_samples
from cloud.api.deps import COOKIE, Principal, principal_for
from cloud.catalog import annotation as ann
from cloud.catalog.models import DatasetSample, Role, Task, TaskKind
from cloud.console._neighbours import nearest
from cloud.errors import CitybrainError

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
PER_PAGE_CHOICES = (24, 48, 96, 192)


class _LoginRedirect(Exception):
    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


def page_user(request: Request) -> Principal:
    token = request.cookies.get(COOKIE)
    user = principal_for(request.app.state.catalog, token) if token else None
    if user is None:
        raise _LoginRedirect(
            request.url.path + (f"?{request.url.query}" if request.url.query else "")
        )
    return user


PageUser = Annotated[Principal, Depends(page_user)]
router = APIRouter(include_in_schema=False)


def render(
    request: Request, name: str, user: Principal | None, status_code: int = 200, **ctx: Any
) -> HTMLResponse:
    can = {
        "write": user is not None and user.role != Role.VIEWER,
        "manage": user is not None and user.role in (Role.ADMIN, Role.OPERATOR),
    }
    return templates.TemplateResponse(
        request, name, {"user": user, "can": can, **ctx}, status_code=status_code
    )


@router.get("/", response_class=HTMLResponse)
def home() -> Response:
    return RedirectResponse("/overview", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(
    request: Request, next: str = Query(default="/datasets", max_length=2000)
) -> HTMLResponse:
    return render(request, "login.html", None, next=_safe_next(next), error=None)


def _safe_next(url: str) -> str:
    ok = url.startswith("/") and not url.startswith(("//", "/\\")) and "\n" not in url
    return url if ok else "/datasets"


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    token: Annotated[str, Form(max_length=500)],
    next: Annotated[str, Form(max_length=2000)] = "/datasets",
) -> Response:
    user = principal_for(request.app.state.catalog, token.strip())
    if user is None:
        return render(
            request,
            "login.html",
            None,
            status_code=401,
            next=_safe_next(next),
            error="Unknown or revoked token.",
        )
    resp = RedirectResponse(_safe_next(next), status_code=303)
    resp.set_cookie(
        COOKIE,
        token.strip(),
        httponly=True,
        samesite="strict",
        path="/",
        max_age=30 * 86400,
        secure=request.url.scheme == "https",
    )
    return resp


@router.get("/logout")
def logout() -> Response:
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, user: PageUser) -> HTMLResponse:
    from cloud.api.routes.datasets import list_datasets

    with request.app.state.catalog.sessions() as session:
        rows = list_datasets(user, session)
    return render(request, "datasets.html", user, datasets=rows)


FILTERS = ("label", "source", "pool", "camera", "device", "labeled")


class HeaderStats(BaseModel):
    name: str
    labels: list[str]
    samples: int
    per_label: dict[str, int]
    per_pool: dict[str, int]


def _header_stats(catalog: Any, name: str) -> HeaderStats:
    """What the dataset page needs at once (cheap on the indexes at 100,000
    samples); the labeled count and versions, which cost table scans, are
    filled in by the page's script from ``GET /api/v1/datasets/{name}``."""
    m = DatasetSample
    with catalog.sessions() as s:
        ds = catalog.get_dataset(name, session=s)
        per_pool = dict(
            s.execute(
                select(m.pool, func.count()).where(m.dataset_id == ds.id).group_by(m.pool)
            ).all()
        )
        per_label = dict(
            s.execute(
                select(m.label, func.count())
                .where(m.dataset_id == ds.id, m.label.is_not(None))
                .group_by(m.label)
            ).all()
        )
        return HeaderStats(
            name=ds.name,
            labels=list(ds.labels or []),
            samples=sum(per_pool.values()),
            per_label=per_label,
            per_pool=per_pool,
        )


@router.get("/datasets/{name}", response_class=HTMLResponse)
def dataset_page(
    request: Request,
    user: PageUser,
    name: str,
    label: str | None = Query(default=None, max_length=128),
    source: str | None = Query(default=None, max_length=1000),
    pool: str | None = Query(default=None, max_length=64),
    camera: str | None = Query(default=None, max_length=128),
    device: str | None = Query(default=None, max_length=128),
    labeled: str | None = Query(default=None, pattern="^(|yes|no)$"),
    page: int = Query(default=1, ge=1, le=10**7),
    per_page: int = Query(default=48, ge=1, le=192),
) -> HTMLResponse:
    catalog = request.app.state.catalog
    stats = _header_stats(catalog, name)
    filt = {
        "label": label or None,
        "source": source or None,
        "pool": pool or None,
        "camera": camera or None,
        "device": device or None,
    }
    lab = {"yes": True, "no": False}.get(labeled or "")
    result = page_samples(
        catalog, name, **filt, labeled=lab, offset=(page - 1) * per_page, limit=per_page
    )
    pages = max(1, math.ceil(result.total / per_page))
    current = {k: v for k, v in {**filt, "labeled": labeled or None}.items() if v}

    def link(p: int) -> str:
        return f"/datasets/{quote(name)}?" + urlencode({**current, "page": p, "per_page": per_page})

    with catalog.sessions() as session:
        tasks = [
            ann.summarize(session, t.id)
            for t in ann.list_annotation_tasks(session, dataset=name, limit=20)
        ]
    return render(
        request,
        "dataset.html",
        user,
        ds=stats,
        page=result,
        page_no=page,
        pages=pages,
        per_page=per_page,
        per_page_choices=PER_PAGE_CHOICES,
        filters=current,
        link=link,
        tasks=tasks,
    )


@router.get("/datasets/{name}/samples/{sample_id}", response_class=HTMLResponse)
def sample_page(request: Request, user: PageUser, name: str, sample_id: str) -> HTMLResponse:
    catalog = request.app.state.catalog
    view = catalog.sample_view(name, sample_id)
    history = catalog.annotation_history(name, sample_id)
    # nearest neighbours only once the flywheel has embedded this sample
    neighbours = None
    if (request.app.state.settings.data_dir / "embeddings").is_dir():
        with catalog.sessions() as session:
            ds = catalog.get_dataset(name, session=session)
            members = set(
                session.scalars(
                    select(DatasetSample.sample_id).where(DatasetSample.dataset_id == ds.id)
                )
            )
        neighbours = nearest(request.app.state.settings.data_dir, sample_id, members)
    return render(
        request, "sample.html", user, ds_name=name, s=view, history=history, neighbours=neighbours
    )


@router.get("/annotate/{task_id}", response_class=HTMLResponse)
def annotate_page(request: Request, user: PageUser, task_id: str) -> HTMLResponse:
    with request.app.state.catalog.sessions() as session:
        summary = ann.summarize(session, task_id)
    return render(request, "annotate.html", user, task=summary)


@router.get("/review/{task_id}", response_class=HTMLResponse)
def review_page(request: Request, user: PageUser, task_id: str) -> HTMLResponse:
    with request.app.state.catalog.sessions() as session:
        summary = ann.summarize(session, task_id)
        agreement = ann.agreement(session, task_id)
    return render(request, "review.html", user, task=summary, agreement=agreement)


@router.get("/tasks", response_class=HTMLResponse)
def tasks_page(request: Request, user: PageUser) -> HTMLResponse:
    with request.app.state.catalog.sessions() as session:
        rows = list(session.scalars(select(Task).order_by(Task.created_at.desc()).limit(200)))
    return render(request, "tasks.html", user, tasks=rows, annotation_kind=TaskKind.ANNOTATION)


def mount_console(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(router)
    from cloud.console._flywheel_pages import router as flywheel_router

    app.include_router(flywheel_router)
    from cloud.console._ops_pages import router as ops_router

    app.include_router(ops_router)
    from cloud.console._graph_pages import router as graph_router

    app.include_router(graph_router)
    from cloud.console._policy_pages import router as policy_router

    app.include_router(policy_router)
    prev_citybrain = app.exception_handlers.get(CitybrainError)

    async def on_login_redirect(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _LoginRedirect)
        return RedirectResponse("/login?" + urlencode({"next": exc.next_url}), status_code=303)

    async def on_citybrain(request: Request, exc: Exception) -> Response:
        # console pages get an HTML error page; the API keeps its JSON errors
        if request.url.path.startswith("/api/") or prev_citybrain is None:
            assert prev_citybrain is not None
            return await prev_citybrain(request, exc)
        from cloud.api.errors import status_for

        assert isinstance(exc, CitybrainError)
        code = status_for(exc)
        token = request.cookies.get(COOKIE)
        user = principal_for(request.app.state.catalog, token) if token else None
        return render(request, "error.html", user, status_code=code, code=code, message=exc.message)

    app.add_exception_handler(_LoginRedirect, on_login_redirect)
    app.add_exception_handler(CitybrainError, on_citybrain)


__all__ = ["mount_console"]

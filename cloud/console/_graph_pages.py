"""Console pages of the knowledge graph and the placement:

* ``/graph`` — the zone tree with a picker;
* ``/graph/{zone}`` — the zone's cameras, their scenes (operator / inferred with its
  confidence), and the algorithms applicable to each, drawn as a layered picture
  (cameras | scenes | events | algorithms: the paths camera → scene → event ←
  algorithm) and listed; operators confirm or reject inferred scenes;
* ``/assignments`` — the plan the re-planning service last saved, per device, with
  compute / memory / decode-slot bars, and the unserved demands; a "why?" button next
  to every served and unserved demand shows the explanation in place
  (``static/graph.js`` over ``/api/v1/assignments/why``). With no saved plan,
  "Preview plan" computes one from the live graph (labelled as a preview).

The data comes from :mod:`cloud.api.routes.graph` (the same functions as the API).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

#: cameras drawn in a zone's picture (the list shows the whole page)
PICTURE_MAX_CAMERAS = 40
#: nodes in one column of the picture at most
PICTURE_MAX_COLUMN = 60
ROW_H = 30
COL_X = (10, 270, 530, 790)
NODE_W = 200
PIC_W = COL_X[-1] + NODE_W + 10


def _render(request: Request, name: str, user: Any, **ctx: Any) -> HTMLResponse:
    from cloud.console._pages import render

    return render(request, name, user, **ctx)


def _user(request: Request) -> Any:
    from cloud.console._pages import page_user

    return page_user(request)


def zone_url(path: str) -> str:
    return "/graph/" + "/".join(quote(p, safe="") for p in path.split("/"))


def _short(text: str, n: int = 26) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def picture(detail: Any, max_cameras: int = PICTURE_MAX_CAMERAS) -> dict[str, Any]:
    """Layout of the layered picture of a zone: nodes in four columns (cameras,
    scenes, events, algorithms) and the edges of every justifying path. Cameras are
    drawn while no column grows past ``PICTURE_MAX_COLUMN`` nodes (the first camera
    always, with its first algorithms only if it alone has too many)."""
    cams = []
    seen: list[set[str]] = [set(), set(), set()]
    cut = 0  # algorithms of the first camera left out of the picture
    for cam in detail.cameras[:max_cameras]:
        algs = list(cam.algorithms)
        keys = [
            {s.scene for s in cam.scenes},
            {j.event for a in algs for j in a.justifications if j.event},
            {a.algorithm for a in algs},
        ]
        if all(len(seen[i] | keys[i]) <= PICTURE_MAX_COLUMN for i in range(3)):
            cams.append(cam)
        elif not cams:
            kept, evs = [], set()
            for a in algs:
                e = evs | {j.event for j in a.justifications if j.event}
                if len(kept) >= PICTURE_MAX_COLUMN or len(e) > PICTURE_MAX_COLUMN:
                    break
                kept.append(a)
                evs = e
            cut = len(algs) - len(kept)
            cam = cam.model_copy(update={"algorithms": kept})
            keys = [keys[0], evs, {a.algorithm for a in kept}]
            cams.append(cam)
        else:
            break
        seen = [seen[i] | keys[i] for i in range(3)]
    cols: list[dict[str, dict[str, Any]]] = [{}, {}, {}, {}]
    edges: dict[tuple[str, str], dict[str, Any]] = {}

    def node(col: int, kind: str, name: str, title: str, cls: str = "") -> str:
        key = f"{kind}:{name}"
        if key not in cols[col]:
            cols[col][key] = {"key": key, "kind": kind, "label": _short(name), "title": title,
                              "cls": cls}  # fmt: skip
        return key

    def edge(a: str, b: str, kind: str, cls: str = "", title: str = "") -> None:
        edges.setdefault((a, b), {"a": a, "b": b, "kind": kind, "cls": cls, "title": title})

    for cam in cams:
        ck = node(0, "camera", cam.camera, f"camera {cam.camera} in {cam.zone}")
        for s in cam.scenes:
            how = "operator" if s.source == "operator" else f"inferred {s.confidence:.2f}"
            state = " (rejected)" if s.rejected else "" if s.counts else " (below threshold)"
            sk = node(1, "scene", s.scene, f"scene {s.scene}")
            cls = ("inferred" if s.source != "operator" else "operator") + (
                "" if s.counts else " off"
            )
            edge(ck, sk, "sees", cls, f"{cam.camera} sees {s.scene}: {how}{state}")
        for a in cam.algorithms:
            ak = node(3, "algorithm", a.algorithm, f"algorithm {a.algorithm} {a.version}")
            for j in a.justifications:
                sk = f"scene:{j.scene}"
                if j.event is None:
                    edge(sk, ak, "applies_to", "", f"{a.algorithm} applies to {j.scene}")
                    continue
                ek = node(2, "event", j.event, f"event {j.event}")
                edge(sk, ek, "may_have", "", f"{j.scene} may have {j.event}")
                edge(ak, ek, "detects", "", f"{a.algorithm} detects {j.event}")
    height = max([len(c) for c in cols] + [1]) * ROW_H + 20
    pos: dict[str, tuple[float, float]] = {}
    nodes = []
    for i, col in enumerate(cols):
        n = len(col)
        top = (height - n * ROW_H) / 2
        for r, nd in enumerate(col.values()):  # first-seen order: few crossings
            y = top + r * ROW_H
            pos[nd["key"]] = (COL_X[i], y)
            nodes.append({**nd, "x": COL_X[i], "y": y, "w": NODE_W, "h": ROW_H - 8})
    paths = []
    for e in edges.values():
        (xa, ya), (xb, yb) = pos[e["a"]], pos[e["b"]]
        if xa > xb:  # detects: algorithm -> event, drawn right to left
            x1, y1, x2, y2 = xa, ya, xb + NODE_W, yb
        else:
            x1, y1, x2, y2 = xa + NODE_W, ya, xb, yb
        h = (ROW_H - 8) / 2
        mx = (x1 + x2) / 2
        paths.append(
            {
                **e,
                "d": f"M{x1:.0f},{y1 + h:.0f} C{mx:.0f},{y1 + h:.0f} {mx:.0f},{y2 + h:.0f} "
                f"{x2:.0f},{y2 + h:.0f}",
            }
        )
    return {
        "width": PIC_W,
        "height": height,
        "nodes": nodes,
        "edges": paths,
        "columns": [
            {"x": COL_X[i] + NODE_W / 2, "label": t}
            for i, t in enumerate(("cameras", "scenes", "events", "algorithms"))
        ],
        "shown": len(cams),
        "total": len(detail.cameras),
        "cut": cut,
    }


@router.get("/graph", response_class=HTMLResponse)
def graph_index(request: Request) -> HTMLResponse:
    from cloud.api.routes.graph import load_graph, zone_tree

    user = _user(request)
    tree = zone_tree(load_graph(request.app))
    return _render(request, "graph.html", user, tree=tree, detail=None, zone_url=zone_url)


@router.get("/graph/{zone:path}", response_class=HTMLResponse)
def graph_zone(
    request: Request,
    zone: str = Path(max_length=512),
    page: int = Query(default=1, ge=1, le=10**6),
    per_page: int = Query(default=25, ge=1, le=500),
) -> HTMLResponse:
    from cloud.api.routes.graph import load_graph, zone_detail, zone_tree

    user = _user(request)
    graph = load_graph(request.app)
    detail = zone_detail(graph, zone.strip("/"), (page - 1) * per_page, per_page)
    pages = max(1, -(-detail.total // per_page))
    return _render(
        request,
        "graph.html",
        user,
        tree=zone_tree(graph),
        detail=detail,
        pic=picture(detail),
        zone_url=zone_url,
        page_no=page,
        pages=pages,
        per_page=per_page,
    )


def bar(fraction: float | None) -> dict[str, Any]:
    """Width and class of a utilisation bar (240 px = full capacity)."""
    f = 0.0 if fraction is None else fraction
    cls = "over" if f > 1 + 1e-9 else "high" if f >= 0.9 else "mid" if f >= 0.6 else "low"
    return {"w": round(240 * min(1.0, max(0.0, f)), 1), "cls": cls, "pct": round(100 * f)}


def _desired_versions(app: Any) -> dict[tuple[str, str, str], str]:
    """(device, camera, algorithm) -> the version the saved desired states send: the
    plan keeps the version it was made with, while a version moving on the channel
    (a hot swap) only rebuilds the desired states."""
    import scheduler as sch
    from cloud.api.routes.graph import state_path

    try:
        state = sch.load_state(state_path(app))
    except (ValueError, OSError):
        return {}
    return {
        (d, a.stream, a.algorithm): a.version
        for d, st in state.desired.items()
        for a in st.assignments
    }


@router.get("/assignments", response_class=HTMLResponse)
def assignments_page(
    request: Request,
    preview: int = Query(default=0, ge=0, le=1),
    device: str | None = Query(default=None, max_length=128),
    camera: str | None = Query(default=None, max_length=128),
    page: int = Query(default=1, ge=1, le=10**6),
    per_page: int = Query(default=20, ge=1, le=200),
) -> HTMLResponse:
    from cloud.api.routes.graph import assignments_view

    user = _user(request)
    view = assignments_view(
        request.app,
        preview=bool(preview),
        device=device or None,
        camera=camera or None,
        offset=(page - 1) * per_page,
        limit=per_page,
    )
    pages = max(1, -(-view.devices_total // per_page))
    desired = _desired_versions(request.app) if view.source.kind == "saved" else {}
    current = {
        k: v
        for k, v in {"preview": preview or None, "device": device, "camera": camera}.items()
        if v
    }

    def link(p: int) -> str:
        return "/assignments?" + urlencode({**current, "page": p, "per_page": per_page})

    return _render(
        request,
        "assignments.html",
        user,
        view=view,
        bar=bar,
        desired=desired,
        preview=bool(preview),
        filters=current,
        page_no=page,
        pages=pages,
        link=link,
    )


__all__ = ["router"]

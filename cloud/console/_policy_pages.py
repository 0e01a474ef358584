"""Console page ``/policies``: operator policies (events per zone glob, priority, time
windows, pins, exclusions) with whether each is active now; operators add and remove
them through ``/api/v1/policies`` (static/policies.js)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from cloud.console._pages import PageUser, render

router = APIRouter(include_in_schema=False)


@router.get("/policies", response_class=HTMLResponse)
def policies_page(request: Request, user: PageUser) -> HTMLResponse:
    import knowledge_graph as kg
    from cloud.api.routes.graph import load_graph
    from cloud.api.routes.policies import _public

    graph = load_graph(request.app)
    now = datetime.now()
    rows = [_public(p, now) for p in graph.policies.values()]
    return render(
        request,
        "policies.html",
        user,
        policies=rows,
        now=now.strftime("%a %H:%M"),
        zones=sorted(graph.nodes(kg.NodeType.ZONE)),
        events=sorted(graph.nodes(kg.NodeType.EVENT)),
    )

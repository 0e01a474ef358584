"""Prometheus /metrics of the API (FastAPI TestClient): request counts and
latency by route template and status, tasks/models per status from the
catalog, and the stdlib exposition helper the edge agent can mirror."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cloud.api.main import create_app
from cloud.api.routes.metrics import UNMATCHED, format_family
from cloud.catalog.models import Model, ModelStatus, Task, TaskKind, TaskStatus
from cloud.core.config import Settings
from tests._api_helpers import ADMIN_TOKEN, NO_REDIS, auth


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture()
def client(tmp_path: Path) -> TestClient:
    settings = Settings(data_dir=tmp_path / "data", redis_url=NO_REDIS, bootstrap_token=ADMIN_TOKEN)
    app = create_app(settings)
    app.state.metrics.catalog_collector.ttl_s = 0.0  # read the catalog on every scrape
    with TestClient(app) as c:
        yield c


def test_requests_are_counted_by_route_template_and_status(client: TestClient) -> None:
    assert client.get("/api/v1/health").status_code == 200
    assert client.get("/api/v1/health").status_code == 200
    assert client.get("/api/v1/datasets").status_code == 401  # no token
    assert client.get("/api/v1/datasets/12345", headers=auth(ADMIN_TOKEN)).status_code == 404
    assert client.get("/api/v1/datasets/999", headers=auth(ADMIN_TOKEN)).status_code == 404
    assert client.get("/no/such/path/abc").status_code == 404
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    s = samples(r.text)
    req = "citybrain_api_requests_total"
    assert s[(req, (("method", "GET"), ("route", "/api/v1/health"), ("status", "200")))] == 2
    assert s[(req, (("method", "GET"), ("route", "/api/v1/datasets"), ("status", "401")))] == 1
    # two ids, one series: the template, not the raw path
    detail = [k for k in s if k[0] == req and ("status", "404") in k[1]]
    routes = {dict(k[1])["route"] for k in detail}
    assert any("{" in r for r in routes), routes
    assert UNMATCHED in routes and "/no/such/path/abc" not in routes
    templ = next(r for r in routes if "{" in r)
    assert s[(req, (("method", "GET"), ("route", templ), ("status", "404")))] == 2
    count = "citybrain_api_request_duration_seconds_count"
    assert s[(count, (("method", "GET"), ("route", "/api/v1/health")))] == 2
    assert s[("citybrain_api_requests_in_progress", ())] == 1  # the scrape itself
    # /metrics is not part of the documented API
    assert "/metrics" not in client.get("/api/v1/openapi.json").json()["paths"]


def test_tasks_and_models_per_status_come_from_the_catalog(client: TestClient) -> None:
    s = samples(client.get("/metrics").text)
    for st in TaskStatus:
        assert s[("citybrain_tasks", (("status", st.value),))] == 0
    for st in ModelStatus:
        assert s[("citybrain_models", (("status", st.value),))] == 0
    assert s[("citybrain_catalog_up", ())] == 1
    catalog = client.app.state.catalog
    with catalog.transaction() as sess:
        kind = next(iter(TaskKind))
        sess.add_all(
            [Task(kind=kind, status=TaskStatus.RUNNING) for _ in range(3)]
            + [Task(kind=kind, status=TaskStatus.FAILED)]
            + [
                Model(algorithm="cls", version="1.0.0", status=ModelStatus.PUBLISHED),
                Model(algorithm="cls", version="1.1.0", status=ModelStatus.CANDIDATE),
                Model(algorithm="cls", version="1.2.0", status=ModelStatus.CANDIDATE),
            ]
        )
    s = samples(client.get("/metrics").text)
    assert s[("citybrain_tasks", (("status", "running"),))] == 3
    assert s[("citybrain_tasks", (("status", "failed"),))] == 1
    assert s[("citybrain_tasks", (("status", "queued"),))] == 0
    assert s[("citybrain_models", (("status", "published"),))] == 1
    assert s[("citybrain_models", (("status", "candidate"),))] == 2


def test_a_broken_catalog_does_not_break_the_scrape(client: TestClient) -> None:
    from cloud.api.routes.metrics import CatalogCollector

    class Broken:
        def sessions(self):  # noqa: ANN202
            raise RuntimeError("database is locked")

    text = "".join(
        f"{m.name} {m.samples[0].value}\n" for m in CatalogCollector(Broken(), ttl_s=0).collect()
    )
    assert "citybrain_catalog_up 0" in text
    assert client.get("/metrics").status_code == 200


def test_format_family_is_valid_exposition() -> None:
    text = format_family(
        "citybrain_edge_frames",
        "counter",
        "frames read\nper stream",
        [({"stream": 'cam "1"\\a'}, 42), ({"stream": "cam2"}, 1.5)],
    ) + format_family("citybrain_edge_outbox_depth", "gauge", "queued messages", [({}, 7)])
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["citybrain_edge_frames"].type == "counter"
    assert fams["citybrain_edge_frames"].documentation == "frames read\nper stream"
    vals = {s.labels.get("stream"): s.value for s in fams["citybrain_edge_frames"].samples}
    assert vals == {'cam "1"\\a': 42.0, "cam2": 1.5}
    assert fams["citybrain_edge_outbox_depth"].samples[0].value == 7
    for bad in ("", "9x", "a-b"):
        with pytest.raises(ValueError, match="invalid metric name"):
            format_family(bad, "gauge", "h", [])
    with pytest.raises(ValueError, match="kind"):
        format_family("x", "summary", "h", [])

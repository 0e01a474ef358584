"""Devices / overview API and ops pages without a reachable Redis: 503 with a
clear message (JSON for the API, the error page for the console); auth and
hostile device ids; ``/`` lands on the overview."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud.api.main import create_app
from cloud.core.config import Settings
from tests._api_helpers import ADMIN_TOKEN, NO_REDIS, auth


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root: Path = tmp_path_factory.mktemp("fleet_api")
    settings = Settings(
        data_dir=root,
        redis_url=NO_REDIS,
        mqtt_url="mqtt://127.0.0.1:1",
        bootstrap_token=ADMIN_TOKEN,
    )
    app = create_app(settings)
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("path", ["/api/v1/devices", "/api/v1/devices/cam-1", "/api/v1/overview"])
def test_redis_down_is_503_with_a_message(api: TestClient, path: str) -> None:
    r = api.get(path, headers=auth(ADMIN_TOKEN))
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["type"] == "Unavailable" and "fleet state from Redis" in err["message"]


def test_token_required_and_bad_inputs_refused(api: TestClient) -> None:
    assert api.get("/api/v1/devices").status_code == 401
    assert api.get("/api/v1/overview").status_code == 401
    h = auth(ADMIN_TOKEN)
    assert api.get("/api/v1/devices?state=sleeping", headers=h).status_code == 422
    assert api.get("/api/v1/devices/..%2Fx", headers=h).status_code in (404, 422)
    assert api.get("/api/v1/devices/" + "x" * 200, headers=h).status_code == 422


def test_console_pages_say_redis_is_unavailable_and_home_is_the_overview(api: TestClient) -> None:
    r = api.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/overview"
    r = api.get("/overview", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=%2Foverview")
    api.cookies.set("citybrain_token", ADMIN_TOKEN)
    try:
        for page in ("/overview", "/devices", "/devices/cam-1"):
            r = api.get(page)
            assert r.status_code == 503 and "fleet state from Redis" in r.text, page
        assert api.get("/devices?state=bogus").status_code == 422
    finally:
        api.cookies.clear()

"""REST API in-process: tokens and roles, the JSON error mapping, hostile inputs."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from cloud.api.errors import STATUS, STORE_KINDS, status_for
from cloud.api.main import create_app
from cloud.catalog.db import transaction
from cloud.catalog.models import Model
from cloud.core.config import Settings
from cloud.errors import Conflict, InvalidInput, UnsafeArchive
from tests._api_helpers import ADMIN_TOKEN, NO_REDIS, auth, png_bytes


@pytest.fixture
def client(tmp_path):
    settings = Settings(
        data_dir=tmp_path / "data", bootstrap_token=ADMIN_TOKEN, max_upload_mb=1, redis_url=NO_REDIS
    )
    app = create_app(settings)
    with TestClient(app) as c:
        c.app_state = app.state  # type: ignore[attr-defined]
        yield c


def make_token(client: TestClient, name: str, role: str) -> str:
    r = client.post("/api/v1/tokens", json={"name": name, "role": role}, headers=auth(ADMIN_TOKEN))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["role"] == role and body["token"].startswith("cb_")
    return body["token"]


def assert_error(r, status: int, type_: str, field: str | None = "__any__") -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == type_ and err["message"]
    if field != "__any__":
        assert err["field"] == field
    return err


def test_health_needs_no_token(client):
    r = client.get("/api/v1/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "catalog": True}


def test_missing_and_unknown_token_are_401(client):
    r = client.get("/api/v1/datasets")
    assert_error(r, 401, "Unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    assert_error(client.get("/api/v1/datasets", headers=auth("cb_nope")), 401, "Unauthorized")


def test_roles(client):
    viewer = make_token(client, "vera", "viewer")
    annotator = make_token(client, "ann", "annotator")
    operator = make_token(client, "otto", "operator")
    # everyone reads
    assert client.get("/api/v1/datasets", headers=auth(viewer)).status_code == 200
    assert client.get("/api/v1/tokens/me", headers=auth(annotator)).json()["name"] == "ann"
    # viewer cannot write
    r = client.post("/api/v1/datasets", json={"name": "d1"}, headers=auth(viewer))
    assert_error(r, 403, "Forbidden")
    # annotator creates datasets but cannot manage tokens nor publish models
    assert (
        client.post("/api/v1/datasets", json={"name": "d1"}, headers=auth(annotator)).status_code
        == 201
    )
    r = client.post("/api/v1/tokens", json={"name": "x", "role": "admin"}, headers=auth(annotator))
    assert_error(r, 403, "Forbidden")
    assert_error(client.get("/api/v1/tokens", headers=auth(operator)), 403, "Forbidden")
    with transaction(client.app_state.catalog.sessions) as s:
        m = Model(algorithm="det", version="1.0.0")
        s.add(m)
        s.flush()
        model_id = m.id
    r = client.post(f"/api/v1/models/{model_id}/publish", headers=auth(annotator))
    assert_error(r, 403, "Forbidden")
    # operators publish only through the evaluation gate
    r = client.post(f"/api/v1/models/{model_id}/publish", headers=auth(operator))
    err = assert_error(r, 409, "Conflict", "gate")
    assert "gate refuses" in err["message"]
    r = client.post(
        f"/api/v1/models/{model_id}/publish", json={"enforce_gate": False}, headers=auth(operator)
    )
    assert_error(r, 403, "Forbidden", "enforce_gate")
    # an admin may skip the gate, but the model must have been exported
    r = client.post(
        f"/api/v1/models/{model_id}/publish",
        json={"enforce_gate": False},
        headers=auth(ADMIN_TOKEN),
    )
    assert "ONNX" in assert_error(r, 422, "InvalidInput")["message"]
    with transaction(client.app_state.catalog.sessions) as s:
        m = s.get(Model, model_id)
        m.metrics = {"gate": {"publish": True, "reason": "better"}}
        m.artifacts = {"onnx": "0" * 64}
    # passes the gate; the store has no signing key yet -> 503 naming the fix
    r = client.post(f"/api/v1/models/{model_id}/publish", headers=auth(operator))
    assert "store keygen" in assert_error(r, 503, "Unavailable", "key")["message"]
    listed = client.get("/api/v1/models", headers=auth(viewer)).json()
    assert listed["total"] == 1 and listed["items"][0]["status"] == "candidate"


def test_revoked_token_stops_working(client):
    tok = make_token(client, "temp", "viewer")
    tid = client.get("/api/v1/tokens/me", headers=auth(tok)).json()["token_id"]
    assert (
        client.delete(f"/api/v1/tokens/{tid}", headers=auth(ADMIN_TOKEN)).json()["revoked"] is True
    )
    assert_error(client.get("/api/v1/datasets", headers=auth(tok)), 401, "Unauthorized")
    tokens = client.get("/api/v1/tokens", headers=auth(ADMIN_TOKEN)).json()
    assert any(t["id"] == tid and t["revoked"] for t in tokens)  # kept, not deleted
    assert "token" not in tokens[0]  # secrets are never listed


def test_duplicate_dataset_unknown_label_and_validation(client):
    h = auth(ADMIN_TOKEN)
    assert (
        client.post(
            "/api/v1/datasets", json={"name": "cars", "labels": ["car"]}, headers=h
        ).status_code
        == 201
    )
    assert_error(
        client.post("/api/v1/datasets", json={"name": "cars"}, headers=h), 409, "Conflict", "name"
    )
    r = client.post("/api/v1/datasets", json={"name": "../etc"}, headers=h)
    err = assert_error(r, 422, "InvalidInput")
    assert err["field"] == "body.name"
    # a sample to label
    r = client.post(
        "/api/v1/datasets/cars/uploads?filename=a.png",
        content=png_bytes(1),
        headers={**h, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    sid = client.get("/api/v1/datasets/cars/samples", headers=h).json()["items"][0]["id"]
    r = client.post(
        f"/api/v1/datasets/cars/samples/{sid}/annotations", json={"label": "spaceship"}, headers=h
    )
    err = assert_error(r, 422, "InvalidInput", "label")
    assert "spaceship" in err["message"]
    r = client.post(
        f"/api/v1/datasets/cars/samples/{sid}/annotations", json={"label": "car"}, headers=h
    )
    assert r.status_code == 201 and r.json()["label"] == "car"
    assert_error(client.get("/api/v1/datasets/nope", headers=h), 404, "NotFound")
    assert_error(client.get("/api/v1/no/such/route", headers=h), 404, "NotFound")


def test_error_mapping_table():
    assert status_for(UnsafeArchive("x")) == 400
    assert status_for(InvalidInput("x")) == 422
    assert status_for(Conflict("x")) == 409
    assert [c for c, _ in STATUS][-1].__name__ == "CitybrainError"
    assert STORE_KINDS["conflict"] == (409, "Conflict")
    assert STORE_KINDS["unavailable"] == (503, "Unavailable")

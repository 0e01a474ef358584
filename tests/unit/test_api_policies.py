"""Policies over REST (``/api/v1/policies``): list with the active flag, add, replace,
remove; operator role for writes; hostile inputs (unknown zone/event/camera/device,
bad time windows, a duplicate id, an unknown policy, unknown fields) refused with a
clear error and nothing changed; the stored graph is what the next reader sees."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import knowledge_graph as kg
from cloud.api.main import create_app
from cloud.core.config import Settings
from tests._api_helpers import ADMIN_TOKEN, NO_REDIS, auth
from tests.conftest import REPO

EXAMPLE = REPO.parent / "shared" / "schemas" / "schedule-instance.example.json"


class Env:
    def __init__(self, root: Path) -> None:
        settings = Settings(
            data_dir=root / "data",
            redis_url=NO_REDIS,
            mqtt_url="mqtt://127.0.0.1:1",
            bootstrap_token=ADMIN_TOKEN,
        )
        self.app = create_app(settings)
        self.client = TestClient(self.app)
        self.engine = self.app.state.catalog.engine
        self.tok = {}
        for role in ("viewer", "operator"):
            r = self.client.post(
                "/api/v1/tokens", json={"name": role, "role": role}, headers=auth(ADMIN_TOKEN)
            )
            assert r.status_code == 201, r.text
            self.tok[role] = r.json()["token"]
        g = kg.load(self.engine)
        g.seed()
        kg.import_instance(json.loads(EXAMPLE.read_text()), graph=g, source="example")
        kg.save(g, self.engine)

    def call(self, method: str, url: str, role: str = "operator", **kw: Any) -> Any:
        return self.client.request(method, url, headers=auth(self.tok[role]), **kw)

    def stored(self) -> dict[str, Any]:
        return kg.load(self.engine).policies


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


NIGHT = {
    "id": "night",
    "zone": "longgang/*",
    "events": ["cargo_carried"],
    "priority": 2,
    "hours": "22-6",
    "days": "mon-fri",
    "pins": [{"camera": "cam-003", "algorithm": "lobby_cargo"}],
    "exclusions": [{"algorithm": "manhole_missing", "device": "edge-02"}],
    "description": "night watch",
}


def test_add_list_replace_remove(env: Env) -> None:
    before = set(env.stored())
    r = env.call("POST", "/api/v1/policies", json=NIGHT)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (
        body["id"] == "night"
        and body["hours"] == ["22-6"]
        and body["days"]
        == ["mon"]
        + [
            "tue",
            "wed",
            "thu",
            "fri",
        ]
    )
    assert body["pins"] == [{"camera": "cam-003", "algorithm": "lobby_cargo"}]
    assert set(env.stored()) == before | {"night"}
    # active flag at a given time: Tuesday 23:00 yes, Tuesday noon no, Saturday night no
    for at, active in (
        ("2026-12-01T23:00:00", True),
        ("2026-12-01T12:00:00", False),
        ("2026-12-05T23:00:00", False),
    ):
        r = env.call("GET", f"/api/v1/policies?at={at}", role="viewer")
        assert r.status_code == 200, r.text
        assert {p["id"]: p["active"] for p in r.json()}["night"] is active, at
    r = env.call("PUT", "/api/v1/policies/night", json={**NIGHT, "priority": 5, "hours": ""})
    assert r.status_code == 200, r.text
    stored = env.stored()["night"]
    assert stored.priority == 5 and stored.hours == [] and stored.description == "night watch"
    r = env.call("DELETE", "/api/v1/policies/night")
    assert r.status_code == 204
    assert set(env.stored()) == before


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"zone": "nowhere/*"}, 422, "zone"),
        ({"events": ["alien_landing"]}, 422, "alien_landing"),
        ({"pins": [{"camera": "cam-999", "algorithm": "lobby_cargo"}]}, 422, "cam-999"),
        ({"exclusions": [{"algorithm": "drowning", "device": "edge-99"}]}, 422, "edge-99"),
        ({"hours": "25-3"}, 422, "25"),
        ({"days": "someday"}, 422, "someday"),
        ({"priority": 0}, 422, "priority"),
        ({"zone": "a//b"}, 422, "zone"),
        ({"colour": "red"}, 422, "colour"),
        ({"events": [], "pins": [], "exclusions": []}, 422, "needs events"),
    ],
)
def test_hostile_policies_are_refused_and_nothing_changes(
    env: Env, change: dict[str, Any], status: int, words: str
) -> None:
    before = {k: v.model_dump() for k, v in env.stored().items()}
    r = env.call("POST", "/api/v1/policies", json={**NIGHT, **change})
    assert r.status_code == status, r.text
    assert words in r.text
    assert {k: v.model_dump() for k, v in env.stored().items()} == before


def test_roles_conflicts_and_unknown_ids(env: Env) -> None:
    r = env.call("POST", "/api/v1/policies", role="viewer", json=NIGHT)
    assert r.status_code == 403
    assert env.call("POST", "/api/v1/policies", json=NIGHT).status_code == 201
    r = env.call("POST", "/api/v1/policies", json=NIGHT)
    assert r.status_code == 409 and "already exists" in r.text
    r = env.call("PUT", "/api/v1/policies/ghost", json={**NIGHT, "id": None})
    assert r.status_code == 404
    r = env.call("PUT", "/api/v1/policies/night", json={**NIGHT, "id": "other"})
    assert r.status_code == 422 and "path" in r.text
    assert env.call("DELETE", "/api/v1/policies/ghost").status_code == 404
    assert env.call("DELETE", "/api/v1/policies/night", role="viewer").status_code == 403
    assert "night" in env.stored()

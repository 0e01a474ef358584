"""``POST /api/v1/graph/cameras/{camera}/scenes/infer``: a scene classifier from the
API's own store runs on a camera's real keyframes and the inferred scenes are saved in
the stored graph; operator role; unknown camera / classifier, a source that cannot be
opened and a classifier whose labels name no scene are refused with nothing saved."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import algorithm_store as st
import knowledge_graph as kg
from cloud.api.main import create_app
from cloud.core.config import Settings
from tests._api_helpers import ADMIN_TOKEN, NO_REDIS, auth
from tests.integration.test_scene_inference import GRAY, folder, publish

pytestmark = pytest.mark.integration


def test_infer_scenes_over_rest(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        redis_url=NO_REDIS,
        mqtt_url="mqtt://127.0.0.1:1",
        bootstrap_token=ADMIN_TOKEN,
    )
    key = st.load_private_key(st.keygen(settings.store_dir))
    store = st.AlgorithmStore(settings.store_dir, private_key=key)
    publish(store, key, tmp_path, "scenes", ["street", "park"])
    publish(store, key, tmp_path, "not-scenes", ["street", "helmet"])
    app = create_app(settings)
    client = TestClient(app)
    tok = {}
    for role in ("viewer", "operator"):
        r = client.post(
            "/api/v1/tokens", json={"name": role, "role": role}, headers=auth(ADMIN_TOKEN)
        )
        tok[role] = r.json()["token"]
    engine = app.state.catalog.engine
    g = kg.load(engine)
    g.seed()
    g.add_camera("cam-road", zone="city/a", source=str(folder(tmp_path / "road", GRAY)))
    g.add_camera("cam-dead", zone="city/a", source=str(tmp_path / "gone.avi"))
    kg.save(g, engine)

    def infer(camera: str, role: str = "operator", **body: object):  # type: ignore[no-untyped-def]
        return client.post(
            f"/api/v1/graph/cameras/{camera}/scenes/infer",
            json={"classifier": "scenes", "frames": 3, **body},
            headers=auth(tok[role]),
        )

    r = infer("cam-road")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["classifier"] == "scenes@1.0.0" and out["frames"] == 3
    assert out["scores"]["street"] > 0.9 and "street" in out["counting"]
    links = {x.scene: x for x in kg.load(engine).scene_links("cam-road")}
    assert links["street"].source == "inferred" and links["street"].confidence > 0.9

    assert infer("cam-road", role="viewer").status_code == 403
    for camera, body, status, words in (
        ("cam-nowhere", {}, 404, "unknown camera"),
        ("cam-dead", {}, 422, "cannot be opened"),
        ("cam-road", {"classifier": "not-scenes"}, 422, "name no scene"),
        ("cam-road", {"classifier": "ghost"}, 404, "ghost"),
        ("cam-road", {"channel": "canary"}, 404, "canary"),
        ("cam-road", {"frames": 0}, 422, "frames"),
    ):
        r = infer(camera, **body)
        assert r.status_code == status and words in r.text, (camera, body, r.text)
    assert kg.load(engine).scene_links("cam-dead") == []

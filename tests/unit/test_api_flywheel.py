"""Flywheel routes in-process: plots, learning curve, lineage, publish through
the gate, roles and hostile inputs, and the console's models pages. One small
pretrained + trained dataset is shared by the module (training is the slow
part). Job submission against a real Redis: test_api_flywheel_jobs.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from fastapi.testclient import TestClient

from cloud.api.main import create_app
from cloud.core.config import Settings
from cloud.flywheel._pipeline import pretrain_dataset, train_dataset
from cloud.flywheel._synthetic import CLASSES, street_scenes
from tests._api_helpers import ADMIN_TOKEN, NO_REDIS, auth

PNG = b"\x89PNG\r\n\x1a\n"


class Env:
    def __init__(self, root: Path) -> None:
        self.settings = Settings(
            data_dir=root / "data",
            redis_url=NO_REDIS,
            mqtt_url="mqtt://127.0.0.1:1",
            bootstrap_token=ADMIN_TOKEN,
        )
        self.app = create_app(self.settings)
        self.client = TestClient(self.app)
        self.catalog = self.app.state.catalog
        self.tok = {}
        for role in ("viewer", "annotator", "operator", "admin"):
            r = self.client.post(
                "/api/v1/tokens", json={"name": role, "role": role}, headers=auth(ADMIN_TOKEN)
            )
            assert r.status_code == 201, r.text
            self.tok[role] = r.json()["token"]

    def h(self, role: str) -> dict[str, str]:
        return auth(self.tok[role])

    def fill(self, name: str, n: int, labeled: int, seed: int = 5) -> None:
        x, y = street_scenes(n, seed=seed)
        self.catalog.create_dataset(name, labels=CLASSES)
        for i, img in enumerate(x):
            ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            assert ok
            sid = self.catalog.add_image_bytes(name, buf.tobytes(), source=f"s{i}.png").id
            if i < labeled:
                self.catalog.annotate(name, sid, label=CLASSES[y[i]], annotator="oracle")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    e = Env(tmp_path_factory.mktemp("flywheel_api"))
    e.fill("street", 40, 40)
    e.pre = pretrain_dataset(e.catalog, "street", epochs=1, max_images=40)
    e.first = train_dataset(e.catalog, "street", algorithm="street")
    return e


def test_confusion_matrix_and_learning_curve_plots(env: Env) -> None:
    mid = env.first.model_id
    r = env.client.get(f"/api/v1/models/{mid}/plots/confusion.png", headers=env.h("viewer"))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content.startswith(PNG)
    r = env.client.get(f"/api/v1/models/{mid}/learning-curve", headers=env.h("viewer"))
    assert r.status_code == 200
    curve = r.json()
    assert curve["algorithm"] == "street"
    [p] = [p for p in curve["points"] if p["model_id"] == mid]
    assert p["round"] == 1 and p["version"] == "1.0.0"
    assert p["accuracy"] == pytest.approx(env.first.metrics.accuracy)
    assert 0 < p["labels"] < 40  # the train split; the rest is the frozen test split
    r = env.client.get(f"/api/v1/models/{mid}/plots/learning-curve.png", headers=env.h("viewer"))
    assert r.status_code == 200 and r.content.startswith(PNG)
    assert env.client.get(f"/api/v1/models/{mid}/plots/confusion.png").status_code == 401


def test_lineage_chain(env: Env) -> None:
    mid = env.first.model_id
    r = env.client.get(f"/api/v1/models/{mid}/lineage", headers=env.h("viewer"))
    assert r.status_code == 200, r.text
    lin = r.json()
    assert lin["model"]["algorithm"] == "street" and lin["model"]["version"] == "1.0.0"
    assert lin["training_task"]["id"] == env.first.task_id
    assert lin["training_task"]["kind"] == "training"
    assert lin["training_task"]["status"] == "succeeded"
    dv = lin["dataset_version"]
    assert dv["dataset"] == "street" and dv["number"] == env.first.dataset_version
    assert dv["labeled_count"] == 40 and sum(dv["label_counts"].values()) == 40
    assert set(dv["label_counts"]) <= set(CLASSES)
    assert lin["backbone"]["name"] == env.pre.backbone
    assert lin["backbone"]["pretraining_task"]["id"] == env.pre.task_id
    assert lin["backbone"]["pretraining_task"]["kind"] == "pretraining"
    assert lin["params"]["mode"] in ("head", "finetune", "scratch")
    assert {("input", "dataset_version"), ("output", "model")} <= {
        (e["direction"], e["entity"]) for e in lin["edges"]
    }


def test_unknown_models_and_datasets_are_404(env: Env) -> None:
    for url in (
        "/api/v1/models/999999/lineage",
        "/api/v1/models/999999/plots/confusion.png",
        "/api/v1/models/999999/plots/learning-curve.png",
        "/api/v1/models/999999/learning-curve",
    ):
        r = env.client.get(url, headers=env.h("viewer"))
        assert r.status_code == 404 and r.json()["error"]["field"] == "model_id", url
    for kind in ("train", "pretrain"):
        r = env.client.post(f"/api/v1/datasets/nope/{kind}", headers=env.h("operator"))
        assert r.status_code == 404
        assert r.json()["error"] == {
            "type": "NotFound",
            "message": "no dataset named 'nope'",
            "field": "name",
        }
    assert env.client.get("/api/v1/models/0/lineage", headers=env.h("viewer")).status_code == 422


def test_roles_on_job_submission(env: Env) -> None:
    for role in ("viewer", "annotator"):
        for kind in ("train", "pretrain"):
            r = env.client.post(f"/api/v1/datasets/street/{kind}", headers=env.h(role))
            assert r.status_code == 403, (role, kind)
            assert r.json()["error"]["type"] == "Forbidden"
    assert env.client.post("/api/v1/datasets/street/train").status_code == 401


def test_hostile_training_requests(env: Env) -> None:
    op = env.h("operator")
    cases = [
        ({"config": {"mode": "magic"}}, "config.mode"),
        ({"config": {"head_epochs": -1}}, "config.head_epochs"),
        ({"config": {"nonsense": 1}}, "config.nonsense"),
        ({"algorithm": "../etc"}, "body.algorithm"),
        ({"task": "segment"}, "body.task"),
        ({"surprise": True}, "body.surprise"),
    ]
    for body, field in cases:
        r = env.client.post("/api/v1/datasets/street/train", json=body, headers=op)
        assert r.status_code == 422, body
        assert r.json()["error"]["field"] == field, r.json()
    r = env.client.post("/api/v1/datasets/street/pretrain", json={"epochs": 0}, headers=op)
    assert r.status_code == 422 and r.json()["error"]["field"] == "body.epochs"


def test_no_job_queue_is_a_clear_503(env: Env) -> None:
    """The app runs with an unreachable Redis here: nothing is queued, and the
    caller is told why."""
    r = env.client.post("/api/v1/datasets/street/train", headers=env.h("operator"))
    assert r.status_code == 503
    assert "Redis" in r.json()["error"]["message"]
    r = env.client.get("/api/v1/tasks?status=queued", headers=env.h("viewer"))
    assert r.json()["total"] == 0  # no task row left behind for a job nobody will run


def test_publish_through_the_gate(env: Env) -> None:
    import algorithm_store as st

    mid = env.first.model_id
    # no key yet: a clear 503 that says what to do
    r = env.client.post(f"/api/v1/models/{mid}/publish", headers=env.h("operator"))
    assert r.status_code == 503 and "citybrain store keygen" in r.json()["error"]["message"]
    # annotators and viewers cannot publish
    for role in ("viewer", "annotator"):
        assert (
            env.client.post(f"/api/v1/models/{mid}/publish", headers=env.h(role)).status_code == 403
        )
    st.keygen(env.settings.store_dir)
    r = env.client.post(
        f"/api/v1/models/{mid}/publish", json={"channel": "canary"}, headers=env.h("operator")
    )
    assert r.status_code == 200, r.text
    assert r.json()["version"] == "1.0.0" and r.json()["channel"] == "canary"
    store = env.client.get("/api/v1/store/algorithms/street", headers=env.h("viewer")).json()
    assert store["channels"] == {"canary": "1.0.0"}
    [v] = store["versions"]
    assert v["metrics"]["accuracy"] == pytest.approx(env.first.metrics.accuracy)
    assert v["lineage"]["training_task"] == env.first.task_id
    lin = env.client.get(f"/api/v1/models/{mid}/lineage", headers=env.h("viewer")).json()
    assert lin["model"]["status"] == "published" and lin["model"]["package"]

    # same labels again: not better than the published version, the gate refuses it
    second = train_dataset(env.catalog, "street", algorithm="street")
    assert not second.gate.publish
    r = env.client.post(f"/api/v1/models/{second.model_id}/publish", headers=env.h("operator"))
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["type"] == "Conflict" and "gate refuses" in err["message"] and err["field"] == "gate"
    versions = env.client.get("/api/v1/store/algorithms/street", headers=env.h("viewer")).json()
    assert [v["version"] for v in versions["versions"]] == ["1.0.0"]  # nothing half-published
    # the learning curve now has both rounds
    curve = env.client.get(
        f"/api/v1/models/{second.model_id}/learning-curve", headers=env.h("viewer")
    ).json()
    assert [p["round"] for p in curve["points"]] == [1, 2]

    # the console shows both, with the gate decision; a refused one keeps its Publish error
    env.client.cookies.set("citybrain_token", env.tok["operator"])
    page = env.client.get("/models")
    assert page.status_code == 200
    assert f'data-model="{mid}"' in page.text and f'data-model="{second.model_id}"' in page.text
    assert "refuse" in page.text and "published" in page.text
    page = env.client.get(f"/models/{second.model_id}")
    assert page.status_code == 200
    assert f"/api/v1/models/{second.model_id}/plots/confusion.png" in page.text
    assert "learning-curve.png" in page.text and 'id="publish-btn"' in page.text
    assert "not better than published" in page.text
    for c in CLASSES:
        assert f"<td>{c}</td>" in page.text  # per-class precision / recall rows
    assert f'href="/tasks#task-{second.task_id}"' in page.text  # lineage links
    assert 'href="/datasets/street"' in page.text
    env.client.cookies.set("citybrain_token", env.tok["viewer"])
    page = env.client.get(f"/models/{mid}")
    assert page.status_code == 200 and 'id="publish-btn"' not in page.text
    assert env.client.get("/models/999999").status_code == 404


def test_dataset_page_buttons_only_for_operators(env: Env) -> None:
    env.client.cookies.set("citybrain_token", env.tok["operator"])
    page = env.client.get("/datasets/street")
    assert 'id="train-btn"' in page.text and 'id="pretrain-btn"' in page.text
    assert "/static/flywheel.js" in page.text
    env.client.cookies.set("citybrain_token", env.tok["annotator"])
    page = env.client.get("/datasets/street")
    assert page.status_code == 200 and 'id="train-btn"' not in page.text

"""``POST /datasets/{name}/train|pretrain`` against a real Redis job queue, run
by an in-process ``cloud.jobs.Worker`` with the registered flywheel handlers:
the task is queued, then runs; training with 0 labels fails the task with
the clear message before any compute."""

from __future__ import annotations

import uuid
from pathlib import Path

import cv2
import pytest
from fastapi.testclient import TestClient

from cloud.api.main import create_app
from cloud.core.config import Settings
from cloud.flywheel._synthetic import CLASSES, street_scenes
from cloud.jobs import JobQueue, Worker
from tests._api_helpers import ADMIN_TOKEN, auth

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Path, redis_url: str):
    prefix = f"cbtest:flyapi:{uuid.uuid4().hex[:10]}"
    settings = Settings(
        data_dir=tmp_path / "data",
        redis_url=redis_url,
        bootstrap_token=ADMIN_TOKEN,
        job_prefix=prefix,
        events_channel=f"{prefix}:events",
        job_max_attempts=1,
    )
    app = create_app(settings)
    client = TestClient(app)
    r = client.post(
        "/api/v1/tokens", json={"name": "op", "role": "operator"}, headers=auth(ADMIN_TOKEN)
    )
    op = auth(r.json()["token"])
    cat = app.state.catalog
    x, _ = street_scenes(6, seed=1)
    cat.create_dataset("pool", labels=CLASSES)
    for i, img in enumerate(x):
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        assert ok
        cat.add_image_bytes("pool", buf.tobytes(), source=f"p{i}.png")
    worker = Worker(settings, name="api-test", block_ms=200)
    yield client, op, worker
    JobQueue(settings).clear()


def _run_one(worker: Worker) -> None:
    for _ in range(50):
        if worker.process_one():
            return
    raise AssertionError("no job arrived")


def test_train_with_zero_labels_fails_the_task_clearly(env) -> None:
    client, op, worker = env
    r = client.post("/api/v1/datasets/pool/train", json={"algorithm": "pool"}, headers=op)
    assert r.status_code == 202, r.text
    task = r.json()
    assert task["kind"] == "training" and task["status"] == "queued"
    assert task["params"]["dataset"] == "pool" and task["created_by"] == "op"
    _run_one(worker)
    done = client.get(f"/api/v1/tasks/{task['id']}", headers=op).json()
    assert done["status"] == "failed"
    assert "cannot train with 0 labels" in done["error"]
    assert client.get("/api/v1/models", headers=op).json()["total"] == 0  # nothing registered


def test_pretrain_job_runs_and_records_the_backbone(env) -> None:
    client, op, worker = env
    r = client.post("/api/v1/datasets/pool/pretrain", json={"epochs": 1}, headers=op)
    assert r.status_code == 202, r.text
    tid = r.json()["id"]
    assert r.json()["kind"] == "pretraining" and r.json()["params"]["epochs"] == 1
    _run_one(worker)
    done = client.get(f"/api/v1/tasks/{tid}", headers=op).json()
    assert done["status"] == "succeeded", done
    assert done["progress"] == 1.0 and done["result"]["backbone"]

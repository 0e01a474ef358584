"""Mining as the console's Mine button runs it: a ``mining`` job run by a real
``citybrain worker`` process, ``POST /api/v1/datasets/{name}/mine`` with its
role checks, and the ``citybrain mine`` command (progress, task id, field
count, reasons table; exit 2 + one line on bad input)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cloud.catalog import Catalog
from cloud.catalog import annotation as ann
from cloud.catalog.models import Task, TaskKind, TaskStatus
from cloud.core.config import Settings
from tests._api_helpers import ADMIN_TOKEN, auth
from tests.integration.test_jobs_worker import Env
from tests.unit.test_mine import N_FIELD, POOL, build_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mine-jobs-world") / "data"
    build_world(Settings(data_dir=root))
    return root


@pytest.fixture
def env(world: Path, tmp_path: Path, redis_url: str) -> Iterator[Env]:
    shutil.copytree(world, tmp_path / "data")
    e = Env(tmp_path, redis_url)
    yield e
    e.close()
    e.queue.clear()


def _annotation_tasks(settings: Settings) -> int:
    with Catalog.open(settings) as cat, cat.transaction() as s:
        return s.scalar(select(func.count(Task.id)).where(Task.kind == TaskKind.ANNOTATION))


def test_mining_job_runs_on_a_worker(env: Env) -> None:
    with Catalog.open(env.settings) as cat:
        ds_id = cat.get_dataset("street").id
    good = env.queue.submit(
        TaskKind.MINING,
        {
            "dataset": "street",
            "model": "1.0.0",
            "budget": 7,
            "strategy": "auto",
            "pools": ["main", "field_hard"],
        },
        dataset_id=ds_id,
    ).id
    too_big = env.queue.submit(
        TaskKind.MINING, {"dataset": "street", "budget": POOL + 5}, dataset_id=ds_id
    ).id
    no_model = env.queue.submit(
        TaskKind.MINING, {"dataset": "street", "budget": 2, "model": "street@4.0.0"}
    ).id
    env.worker("miner")
    t = env.finished(good, timeout=240)
    assert t.status == TaskStatus.SUCCEEDED, t.error
    assert t.result["selected"] == 7 and t.result["model"] == "street@1.0.0"
    assert t.result["field_pool"] == N_FIELD
    assert t.progress == 1.0
    with Catalog.open(env.settings) as cat, cat.transaction() as s:
        items = ann.my_items(s, t.result["annotation_task_id"], "ann")
    assert len(items) == 7 and all(i.reason and i.prelabel for i in items)

    t = env.finished(too_big, timeout=120)
    assert t.status == TaskStatus.FAILED and t.attempts == 1  # bad input: not retried
    assert f"larger than the pool: {POOL - 7} unlabeled" in t.error
    t = env.finished(no_model, timeout=120)
    assert t.status == TaskStatus.FAILED and "street@4.0.0" in t.error
    assert _annotation_tasks(env.settings) == 1


def test_cli_mine(env: Env) -> None:
    r = env.cli("mine", "street", "--model", "1.0.0", "--budget", "6", "--strategy", "margin")
    assert r.returncode == 0, r.stderr
    assert "annotation task " in r.stdout and "from field hard cases" in r.stdout
    assert "top reasons" in r.stdout and "margin" in r.stdout
    with Catalog.open(env.settings) as cat, cat.transaction() as s:
        (task,) = ann.list_annotation_tasks(s, dataset="street")
        assert task.id in r.stdout and ann.summarize(s, task.id).samples == 6

    for args, expect in [
        (["--budget", "0"], "budget must be at least 1"),
        (["--budget", str(POOL)], f"larger than the pool: {POOL - 6} unlabeled"),
        (["--budget", "2", "--model", "7.7.7"], "model version '7.7.7' does not exist"),
        (["--budget", "2", "--pool", "night"], "no pool 'night'"),
        (["--budget", "2", "--strategy", "psychic"], "unknown strategy 'psychic'"),
    ]:
        r = env.cli("mine", "street", *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and expect in lines[0], (args, r.stderr)
    r = env.cli("mine", "empty", "--budget", "1")
    assert r.returncode == 2 and "has no samples" in r.stderr
    r = env.cli("mine", "street", "--budget", "3", "--no-field", "--pool", "main")
    assert r.returncode == 0, r.stderr
    assert "(0 from field hard cases)" in r.stdout
    assert _annotation_tasks(env.settings) == 2


def test_api_mine_roles_bad_input_and_result(world: Path, tmp_path: Path, redis_url: str) -> None:
    from cloud.api.main import create_app
    from cloud.jobs import JobQueue, Worker

    shutil.copytree(world, tmp_path / "data")
    prefix = f"cbtest:mineapi:{uuid.uuid4().hex[:10]}"
    settings = Settings(
        data_dir=tmp_path / "data",
        redis_url=redis_url,
        bootstrap_token=ADMIN_TOKEN,
        job_prefix=prefix,
        events_channel=f"{prefix}:events",
        job_max_attempts=1,
    )
    client = TestClient(create_app(settings))
    tok = {}
    for role in ("viewer", "annotator", "operator"):
        r = client.post(
            "/api/v1/tokens", json={"name": role, "role": role}, headers=auth(ADMIN_TOKEN)
        )
        tok[role] = auth(r.json()["token"])
    url = "/api/v1/datasets/street/mine"
    try:
        for role in ("viewer", "annotator"):
            assert client.post(url, json={"budget": 3}, headers=tok[role]).status_code == 403
        assert client.post(url, json={"budget": 3}).status_code == 401

        for body, status, expect in [
            ({"budget": 0}, 422, "budget"),
            ({"budget": POOL + 1}, 422, f"larger than the pool: {POOL} unlabeled"),
            ({"budget": 2, "model": "3.3.3"}, 404, "'3.3.3' does not exist"),
            ({"budget": 2, "pools": ["night"]}, 422, "no pool 'night'"),
            ({"budget": 2, "pools": ["../x"]}, 422, "bad pool name"),
            ({"budget": 2, "strategy": "psychic"}, 422, "unknown strategy"),
            ({"budget": 2, "colour": "red"}, 422, "colour"),
        ]:
            r = client.post(url, json=body, headers=tok["operator"])
            assert r.status_code == status, (body, r.text)
            assert expect in r.text, (body, r.text)
        r = client.post(
            "/api/v1/datasets/nowhere/mine", json={"budget": 1}, headers=tok["operator"]
        )
        assert r.status_code == 404
        r = client.post("/api/v1/datasets/empty/mine", json={"budget": 1}, headers=tok["operator"])
        assert r.status_code == 422 and "has no samples" in r.text
        with Catalog.open(settings) as cat, cat.transaction() as s:
            assert s.scalar(select(func.count(Task.id)).where(Task.kind == TaskKind.MINING)) == 0

        r = client.post(url, json={"budget": 5, "strategy": "entropy"}, headers=tok["operator"])
        assert r.status_code == 202, r.text
        task = r.json()
        assert task["kind"] == "mining" and task["status"] == "queued"
        assert task["params"]["model"] == "street@1.0.0" and task["created_by"] == "operator"
        pending = client.get(f"/api/v1/mining/{task['id']}", headers=tok["viewer"]).json()
        assert pending["status"] == "queued" and pending["items"] == []

        worker = Worker(settings, name="mine-api", block_ms=200)
        for _ in range(50):
            if worker.process_one():
                break
        res = client.get(f"/api/v1/mining/{task['id']}", headers=tok["viewer"])
        assert res.status_code == 200, res.text
        res = res.json()
        assert res["status"] == "succeeded" and res["selected"] == 5
        assert all(
            i["reason"] and i["prelabel"] in ("empty", "pedestrian", "vehicle", "cone")
            for i in res["items"]
        )
        items = client.get(
            f"/api/v1/annotation-tasks/{res['annotation_task_id']}/items", headers=tok["annotator"]
        ).json()
        assert len(items) == 5
        assert all(i["reason"] and i["prelabel"]["label"] for i in items)
        r = client.get("/api/v1/mining/nope", headers=tok["viewer"])
        assert r.status_code == 404
    finally:
        JobQueue(settings).clear()

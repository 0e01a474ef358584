"""Task actions over the API against the real job queue on Redis (unique key
prefix and events channel, cleaned up): retry a failed import, cancel it."""

from __future__ import annotations

import json
import uuid

import pytest
import redis
from fastapi.testclient import TestClient

from cloud.api.main import create_app
from cloud.core.config import Settings
from tests._api_helpers import ADMIN_TOKEN, auth, png_bytes

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path, redis_url):
    prefix = f"cbtest:{uuid.uuid4().hex[:10]}"
    settings = Settings(
        data_dir=tmp_path / "data",
        bootstrap_token=ADMIN_TOKEN,
        redis_url=redis_url,
        job_prefix=f"{prefix}:jobs",
        events_channel=f"{prefix}:events",
    )
    app = create_app(settings)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with TestClient(app) as c:
            yield c, r, settings
    finally:
        for key in r.scan_iter(f"{prefix}:*"):
            r.delete(key)
        r.close()


def test_retry_and_cancel_a_failed_upload_import(env):
    c, r, settings = env
    h = auth(ADMIN_TOKEN)
    operator = c.post("/api/v1/tokens", json={"name": "op", "role": "operator"}, headers=h).json()
    annotator = c.post("/api/v1/tokens", json={"name": "an", "role": "annotator"}, headers=h).json()
    pubsub = r.pubsub()
    pubsub.subscribe(settings.events_channel)
    assert (
        c.post("/api/v1/datasets/d/uploads?filename=x.png", content=b"nope", headers=h).status_code
        == 422
    )
    failed = c.get("/api/v1/tasks?status=failed", headers=h).json()["items"][0]
    assert failed["kind"] == "import" and "x.png" in failed["error"]
    # live events were published for the run and its failure
    statuses = []
    while (m := pubsub.get_message(timeout=1.0)) is not None:
        if m["type"] == "message":
            statuses.append(json.loads(m["data"])["status"])
    assert "running" in statuses and "failed" in statuses
    pubsub.close()
    tid = failed["id"]
    assert c.post(f"/api/v1/tasks/{tid}/retry", headers=auth(annotator["token"])).status_code == 403
    r1 = c.post(f"/api/v1/tasks/{tid}/retry", headers=auth(operator["token"]))
    assert r1.status_code == 200, r1.text
    assert r1.json()["status"] == "queued" and r1.json()["attempts"] == 0
    entries = r.xrange(f"{settings.job_prefix}:stream")
    assert [e[1]["task_id"] for e in entries] == [tid]
    r2 = c.post(f"/api/v1/tasks/{tid}/cancel", headers=auth(operator["token"]))
    assert r2.status_code == 200 and r2.json()["status"] == "cancelled"
    assert c.post(f"/api/v1/tasks/{tid}/cancel", headers=auth(operator["token"])).status_code == 409
    assert c.post("/api/v1/tasks/nope/cancel", headers=auth(operator["token"])).status_code == 404
    # an upload that works is a succeeded import task
    ok = c.post("/api/v1/datasets/d/uploads?filename=y.png", content=png_bytes(9), headers=h)
    assert ok.status_code == 201
    assert c.get(f"/api/v1/tasks/{ok.json()['task_id']}", headers=h).json()["status"] == "succeeded"

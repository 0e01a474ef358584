"""Uploads in-process: size limit enforced while reading (honest and lying
Content-Length), zip with ../, multipart with a labels CSV, raw bodies."""

from __future__ import annotations

import asyncio
import os

import pytest
from fastapi.testclient import TestClient

from cloud.api.main import create_app
from cloud.core.config import Settings
from tests._api_helpers import ADMIN_TOKEN, NO_REDIS, auth, png_bytes, zip_bytes

MB = 1 << 20


@pytest.fixture
def app(tmp_path):
    return create_app(
        Settings(
            data_dir=tmp_path / "data",
            bootstrap_token=ADMIN_TOKEN,
            max_upload_mb=1,
            redis_url=NO_REDIS,
        )
    )


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


def _uploads_left(app) -> list[str]:
    d = app.state.settings.data_dir / "uploads"
    return os.listdir(d) if d.exists() else []


def test_multipart_images_and_labels_csv(client, app):
    files = [
        ("file", ("a.png", png_bytes(1), "image/png")),
        ("file", ("b.png", png_bytes(2), "image/png")),
        ("labels", ("labels.csv", b"path,label\na.png,car\nb.png,bus\n", "text/csv")),
    ]
    r = client.post("/api/v1/datasets/street/uploads", files=files, headers=auth(ADMIN_TOKEN))
    assert r.status_code == 201, r.text
    rep = r.json()
    assert rep["added"] == 2 and rep["annotations_added"] == 2 and rep["created"] is True
    page = client.get("/api/v1/datasets/street/samples", headers=auth(ADMIN_TOKEN)).json()
    assert sorted(s["label"] for s in page["items"]) == ["bus", "car"]
    # re-upload adds nothing (content ids)
    r = client.post("/api/v1/datasets/street/uploads", files=files[:2], headers=auth(ADMIN_TOKEN))
    assert r.status_code == 201 and r.json()["added"] == 0 and r.json()["existing"] == 2
    assert _uploads_left(app) == []  # temp files removed


def test_over_limit_with_honest_content_length_is_413(client, app):
    body = os.urandom(MB + 10)
    r = client.post(
        "/api/v1/datasets/big/uploads?filename=x.jpg",
        content=body,
        headers={**auth(ADMIN_TOKEN), "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "PayloadTooLarge"
    assert client.get("/api/v1/datasets/big", headers=auth(ADMIN_TOKEN)).status_code == 404
    assert _uploads_left(app) == []


def _asgi_post(
    app, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[int, bytes, int]:
    """Drive the ASGI app directly: returns (status, body, bytes the app pulled)."""
    sent = {"n": 0}
    queue = list(chunks)
    out: dict = {"status": 0, "body": b""}

    async def receive():
        if queue:
            chunk = queue.pop(0)
            sent["n"] += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": bool(queue)}
        await asyncio.sleep(3600)  # a client that never finishes
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"filename=x.zip",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "app": app,
    }

    async def main():
        await asyncio.wait_for(app(scope, receive, send), 30)

    asyncio.run(main())
    return out["status"], out["body"], sent["n"]


def test_lying_content_length_is_cut_off_while_reading(client, app):
    chunk = os.urandom(256 * 1024)
    chunks = [chunk] * 40  # 10 MiB offered, the header claims 100 bytes
    headers = [
        (b"authorization", f"Bearer {ADMIN_TOKEN}".encode()),
        (b"content-type", b"application/zip"),
        (b"content-length", b"100"),
    ]
    status, body, pulled = _asgi_post(app, "/api/v1/datasets/liar/uploads", headers, chunks)
    assert status == 413, body
    assert b"PayloadTooLarge" in body
    # stopped soon after the limit: did not read the whole 10 MiB
    assert pulled <= MB + len(chunk)
    assert _uploads_left(app) == []


def test_chunked_multipart_without_content_length_is_413(client, app):
    boundary = b"XyZ"
    head = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\nContent-Type: application/zip\r\n\r\n'
    chunks = [head] + [os.urandom(256 * 1024)] * 8
    headers = [
        (b"authorization", f"Bearer {ADMIN_TOKEN}".encode()),
        (b"content-type", b"multipart/form-data; boundary=" + boundary),
        (b"transfer-encoding", b"chunked"),
    ]
    status, body, pulled = _asgi_post(app, "/api/v1/datasets/chunky/uploads", headers, chunks)
    assert status == 413, body
    assert pulled < 2 * MB


def test_zip_with_parent_path_is_400_naming_the_member(client):
    data = zip_bytes({"ok.png": png_bytes(1), "../evil.png": png_bytes(2)})
    r = client.post(
        "/api/v1/datasets/z/uploads",
        files=[("file", ("evil.zip", data, "application/zip"))],
        headers=auth(ADMIN_TOKEN),
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "UnsafeArchive" and "../evil.png" in err["message"]
    assert client.get("/api/v1/datasets/z", headers=auth(ADMIN_TOKEN)).status_code == 404


def test_bad_uploads_are_4xx(client):
    h = auth(ADMIN_TOKEN)
    r = client.post(
        "/api/v1/datasets/q/uploads", content=b"hello", headers={**h, "Content-Type": "text/plain"}
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "filename"
    r = client.post("/api/v1/datasets/q/uploads?filename=x.png", content=b"not a png", headers=h)
    assert r.status_code == 422 and "x.png" in r.json()["error"]["message"]
    r = client.post(
        "/api/v1/datasets/q/uploads",
        files=[("other", ("a.png", png_bytes(1), "image/png"))],
        headers=h,
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "other"
    r = client.post(
        "/api/v1/datasets/q/uploads",
        content=b"--zz\r\ngarbage",
        headers={**h, "Content-Type": "multipart/form-data; boundary=zz"},
    )
    assert 400 <= r.status_code < 500


def test_upload_is_recorded_as_an_import_task(client):
    h = auth(ADMIN_TOKEN)
    r = client.post("/api/v1/datasets/rec/uploads?filename=a.png", content=png_bytes(5), headers=h)
    assert r.status_code == 201
    task_id = r.json()["task_id"]
    task = client.get(f"/api/v1/tasks/{task_id}", headers=h).json()
    assert task["kind"] == "import" and task["status"] == "succeeded" and task["progress"] == 1.0
    assert task["result"]["added"] == 1 and task["created_by"] == "bootstrap"
    # a failed import leaves a failed task naming the error, and no dataset
    r = client.post("/api/v1/datasets/rec2/uploads?filename=b.png", content=b"junk", headers=h)
    assert r.status_code == 422
    failed = client.get("/api/v1/tasks?kind=import&status=failed", headers=h).json()
    assert failed["total"] == 1 and "b.png" in failed["items"][0]["error"]
    assert client.get("/api/v1/datasets/rec2", headers=h).status_code == 404
    # retrying needs the job queue: Redis is unreachable here -> 503 JSON
    r = client.post(f"/api/v1/tasks/{failed['items'][0]['id']}/retry", headers=h)
    assert r.status_code == 503 and r.json()["error"]["type"] == "Unavailable"
    r = client.get("/api/v1/events", headers=h)
    assert r.status_code == 503 and r.json()["error"]["type"] == "Unavailable"

"""`citybrain serve` as a real process: health, CLI tokens against it, upload
limits on the wire (honest Content-Length and chunked bodies), live events
relayed from Redis pub/sub as Server-Sent Events."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from tests._api_helpers import ADMIN_TOKEN, auth, png_bytes, serve_subprocess

#: one client with generous timeouts: the test machines are shared and slow
HTTP = httpx.Client(timeout=60)
pytestmark = pytest.mark.integration
MB = 1 << 20
CHANNEL = f"cbtest:{uuid.uuid4().hex[:10]}:events"


@pytest.fixture
def server(tmp_path, redis_url):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {
        "CITYBRAIN_MAX_UPLOAD_MB": "1",
        "CITYBRAIN_REDIS_URL": redis_url,
        "CITYBRAIN_EVENTS_CHANNEL": CHANNEL,
    }
    with serve_subprocess(data_dir, extra_env=env) as url:
        yield url, data_dir


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CITYBRAIN_DATA_DIR": str(data_dir)}
    env.pop("CITYBRAIN_DB_URL", None)
    exe = str(Path(sys.executable).parent / "citybrain")
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=60)


def test_cli_tokens_work_against_the_server(server):
    url, data_dir = server
    assert HTTP.get(f"{url}/api/v1/health").json()["status"] == "ok"
    res = _cli(data_dir, "token", "create", "alice", "--role", "viewer")
    assert res.returncode == 0, res.stderr
    token = res.stdout.strip()
    assert token.startswith("cb_") and "shown once" in res.stderr
    assert HTTP.get(f"{url}/api/v1/tokens/me", headers=auth(token)).json()["role"] == "viewer"
    r = HTTP.post(f"{url}/api/v1/datasets", json={"name": "x"}, headers=auth(token))
    assert r.status_code == 403
    listing = _cli(data_dir, "token", "list")
    assert "alice" in listing.stdout and token not in listing.stdout
    assert _cli(data_dir, "token", "revoke", "alice").returncode == 0
    assert HTTP.get(f"{url}/api/v1/tokens/me", headers=auth(token)).status_code == 401
    bad = _cli(data_dir, "token", "create", "bob", "--role", "emperor")
    assert (
        bad.returncode == 2
        and "unknown role" in bad.stderr
        and len(bad.stderr.strip().splitlines()) == 1
    )


def _raw_request(url: str, head: bytes, body_chunks, timeout: float = 20) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: expected once over the limit
        data = b""
        try:
            while True:
                got = sock.recv(65536)
                if not got:
                    break
                data += got
                if b"\r\n\r\n" in data and b'"error"' in data:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return data


def test_upload_limits_on_the_wire(server):
    url, _ = server
    path = "/api/v1/datasets/wire/uploads?filename=big.zip"
    # an honest Content-Length over the limit: refused before the body is read
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
        f"Content-Type: application/zip\r\nContent-Length: {3 * MB}\r\n\r\n"
    ).encode()
    resp = _raw_request(url, head, [])
    assert resp.startswith(b"HTTP/1.1 413"), resp[:200]
    # chunked (no Content-Length at all): cut off once over the limit
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
        f"Content-Type: application/zip\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = os.urandom(128 * 1024)
    chunks = (b"%x\r\n" % len(piece) + piece + b"\r\n" for _ in range(24))  # 3 MiB
    resp = _raw_request(url, head, chunks)
    assert resp.startswith(b"HTTP/1.1 413"), resp[:200]
    assert b"PayloadTooLarge" in resp
    # under the limit the same route imports
    r = HTTP.post(
        f"{url}/api/v1/datasets/wire/uploads?filename=a.png",
        content=png_bytes(3),
        headers=auth(ADMIN_TOKEN),
    )
    assert r.status_code == 201 and r.json()["added"] == 1
    assert not list((server[1] / "uploads").iterdir())


def test_events_are_relayed_as_sse(server, redis_url):
    url, _ = server
    task_id = "test-" + uuid.uuid4().hex
    got: list[dict] = []
    ready = threading.Event()

    def listen() -> None:
        with httpx.stream(
            "GET", f"{url}/api/v1/events", headers=auth(ADMIN_TOKEN), timeout=20
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("event: hello"):
                    ready.set()
                if line.startswith("data: "):
                    ev = json.loads(line[6:])
                    if ev.get("task_id") == task_id:
                        got.append(ev)
                        if ev["progress"] >= 1.0:
                            return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert ready.wait(60)
    r = redis.Redis.from_url(redis_url)
    try:
        for p in (0.25, 0.5, 1.0):
            msg = {
                "type": "task",
                "task_id": task_id,
                "kind": "import",
                "status": "running",
                "progress": p,
                "message": f"{p:.0%}",
            }
            r.publish(CHANNEL, json.dumps(msg))
            time.sleep(0.1)
    finally:
        r.close()
    t.join(60)
    assert [e["progress"] for e in got] == [0.25, 0.5, 1.0]
    # no token: 401 before any stream starts
    assert HTTP.get(f"{url}/api/v1/events").status_code == 401

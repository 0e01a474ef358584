"""The store's FastAPI router: listing, guarded channel moves and rollouts,
resumable artifact downloads (Range, ETag, If-None-Match, If-Range)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI, Header, HTTPException
from fastapi.testclient import TestClient

import algorithm_store as st
from algorithm_store.testing import tiny_classifier_onnx, tiny_package_kwargs


def _operator(x_role: str | None = Header(default=None)) -> None:
    if x_role != "operator":
        raise HTTPException(status_code=403, detail="operator role required")


OP = {"x-role": "operator"}


@pytest.fixture
def env(tmp_path: Path):
    key = st.load_private_key(st.keygen(tmp_path / "keys"))
    store = st.AlgorithmStore(tmp_path / "store", private_key=key)
    archives = {}
    for v in ("1.0.0", "1.1.0"):
        model = tiny_classifier_onnx(
            tmp_path / v / "model.onnx", seed=int(v[2]), min_weight_bytes=64 * 1024
        )
        archives[v] = st.build_package(
            model,
            id="cars",
            version=v,
            private_key=key,
            out_dir=tmp_path / "out",
            **tiny_package_kwargs(),
        ).archive
    store.publish(archives["1.0.0"], channel="stable")
    store.publish(archives["1.1.0"])
    app = FastAPI()
    app.include_router(st.make_router(store, require_operator=_operator), prefix="/api/v1/store")
    return TestClient(app), store, archives


def test_listing_and_version_details(env) -> None:
    client, store, _ = env
    r = client.get("/api/v1/store/algorithms")
    assert r.status_code == 200
    assert r.json() == [
        {
            "id": "cars",
            "versions": ["1.1.0", "1.0.0"],
            "latest": "1.1.0",
            "channels": {"stable": "1.0.0"},
        }
    ]
    r = client.get("/api/v1/store/algorithms/cars")
    body = r.json()
    assert [v["version"] for v in body["versions"]] == ["1.1.0", "1.0.0"]
    v = body["versions"][1]
    assert v["channels"] == ["stable"] and v["targets"] == ["cpu-x86"]
    assert v["metrics"] == {"accuracy": 0.9} and v["engines"] == []
    assert v["cost"]["cpu-x86"]["measured"] is True
    full = client.get("/api/v1/store/algorithms/cars/versions/1.0.0").json()
    assert full["manifest"]["signature"]["key_id"]
    assert client.get("/api/v1/store/algorithms/nope").status_code == 404
    nf = client.get("/api/v1/store/algorithms/cars/versions/9.0.0")
    assert nf.status_code == 404 and "not published" in nf.json()["detail"]["message"]


def test_promote_rollback_rollouts_need_operator(env) -> None:
    client, store, _ = env
    base = "/api/v1/store/algorithms/cars/channels/stable"
    assert client.post(f"{base}/promote", json={"version": "1.1.0"}).status_code == 403
    assert store.channels("cars")["stable"] == "1.0.0"
    r = client.post(f"{base}/promote", json={"version": "1.1.0"}, headers=OP)
    assert r.status_code == 200 and r.json()["previous"] == "1.0.0"
    r = client.post(f"{base}/promote", json={"version": "1.0.0"}, headers=OP)
    assert r.status_code == 409 and "explicit rollback" in r.json()["detail"]["message"]
    r = client.post(f"{base}/rollback", json={"reason": "field errors"}, headers=OP)
    assert r.status_code == 200 and r.json()["version"] == "1.0.0"
    bad = client.post(f"{base}/promote", json={"version": "1.1.0", "junk": 1}, headers=OP)
    assert bad.status_code == 422

    body = {
        "algorithm": "cars",
        "version": "1.1.0",
        "channel": "stable",
        "groups": [{"name": "lab", "devices": ["d1"]}, {"name": "all", "devices": ["d2", "d3"]}],
    }
    assert client.post("/api/v1/store/rollouts", json=body).status_code == 403
    r = client.post("/api/v1/store/rollouts", json=body, headers=OP)
    assert r.status_code == 201
    rid = r.json()["id"]
    assert client.post("/api/v1/store/rollouts", json=body, headers=OP).status_code == 409
    prog = client.get(f"/api/v1/store/rollouts/{rid}").json()
    assert prog["state"] == "running" and prog["groups"][0]["waiting"] == 1
    assert (
        client.post(f"/api/v1/store/rollouts/{rid}/pause", json={}, headers=OP).json()["state"]
        == "paused"
    )
    assert (
        client.post(f"/api/v1/store/rollouts/{rid}/abort", json={"reason": "x"}).status_code == 403
    )
    r = client.post(f"/api/v1/store/rollouts/{rid}/abort", json={"reason": "x"}, headers=OP)
    assert r.json()["state"] == "rolled_back"
    r = client.post(f"/api/v1/store/rollouts/{rid}/resume", json={}, headers=OP)
    assert r.status_code == 409 and "cannot go from rolled_back" in r.json()["detail"]["message"]
    assert [x["id"] for x in client.get("/api/v1/store/rollouts?algorithm=cars").json()] == [rid]
    log = client.get("/api/v1/store/algorithms/cars/transitions").json()
    assert [t["to_value"] for t in log if t["kind"] == "rollout"][-2:] == ["aborted", "rolled_back"]


def test_artifact_full_range_etag_and_resume(env) -> None:
    client, store, archives = env
    data = archives["1.0.0"].read_bytes()
    sha = store.version("cars", "1.0.0").sha256
    url = f"/api/v1/store/artifacts/{sha}"
    r = client.get(url)
    assert r.status_code == 200 and r.content == data
    assert r.headers["etag"] == f'"{sha}"' and r.headers["accept-ranges"] == "bytes"
    assert int(r.headers["content-length"]) == len(data)
    h = client.head(url)
    assert (
        h.status_code == 200 and h.content == b"" and int(h.headers["content-length"]) == len(data)
    )
    # interrupted download resumed from where it stopped
    cut = len(data) // 3
    part1 = client.get(url, headers={"Range": f"bytes=0-{cut - 1}"})
    assert part1.status_code == 206 and part1.content == data[:cut]
    assert part1.headers["content-range"] == f"bytes 0-{cut - 1}/{len(data)}"
    part2 = client.get(url, headers={"Range": f"bytes={cut}-", "If-Range": f'"{sha}"'})
    assert part2.status_code == 206 and part1.content + part2.content == data
    suffix = client.get(url, headers={"Range": "bytes=-100"})
    assert suffix.status_code == 206 and suffix.content == data[-100:]
    # If-Range with another validator: the whole artifact, not a mixed file
    stale = client.get(url, headers={"Range": f"bytes={cut}-", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == data
    # unsatisfiable range
    r416 = client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert r416.status_code == 416 and r416.headers["content-range"] == f"bytes */{len(data)}"
    # multiple ranges are not supported: the whole body is sent
    multi = client.get(url, headers={"Range": "bytes=0-1,5-6"})
    assert multi.status_code == 200 and multi.content == data
    # conditional GET
    nm = client.get(url, headers={"If-None-Match": f'"{sha}"'})
    assert nm.status_code == 304 and nm.content == b""
    assert client.get(url, headers={"If-None-Match": '"x"'}).status_code == 200


def test_only_published_artifacts_are_served(env, tmp_path: Path) -> None:
    client, store, _ = env
    assert client.get(f"/api/v1/store/artifacts/{'0' * 64}").status_code == 404
    assert client.get("/api/v1/store/artifacts/notasha").status_code == 404
    # a blob that sits in the store without a published version (crash orphan) is not served
    orphan = "ab" * 32
    p = store.blob_path(orphan)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"half published")
    assert client.get(f"/api/v1/store/artifacts/{orphan}").status_code == 404


def test_router_without_guard_is_open(tmp_path: Path) -> None:
    key = st.load_private_key(st.keygen(tmp_path / "k"))
    store = st.AlgorithmStore(tmp_path / "s", private_key=key)
    app = FastAPI()
    app.include_router(st.make_router(store))
    client = TestClient(app)
    assert client.get("/algorithms").json() == []
    r = client.post("/algorithms/x/channels/stable/promote", json={"version": "1.0.0"})
    assert r.status_code == 404

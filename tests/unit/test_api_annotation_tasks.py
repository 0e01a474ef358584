"""Annotation tasks over HTTP (in-process): distributed batches, submit,
review, agreement, and the console pages rendering them."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from cloud.api.main import create_app
from cloud.core.config import Settings
from tests._api_helpers import ADMIN_TOKEN, NO_REDIS, auth, png_bytes


@pytest.fixture
def env(tmp_path):
    settings = Settings(
        data_dir=tmp_path / "data",
        bootstrap_token=ADMIN_TOKEN,
        redis_url=NO_REDIS,
    )
    with TestClient(create_app(settings)) as c:
        h = auth(ADMIN_TOKEN)
        files = [("file", (f"i{i}.png", png_bytes(i), "image/png")) for i in range(12)]
        assert c.post("/api/v1/datasets/cars/uploads", files=files, headers=h).status_code == 201
        toks = {}
        for name, role in [
            ("ann", "annotator"),
            ("bob", "annotator"),
            ("op", "operator"),
            ("vic", "viewer"),
        ]:
            toks[name] = c.post(
                "/api/v1/tokens", json={"name": name, "role": role}, headers=h
            ).json()["token"]
        yield c, toks


def test_distributed_task_review_and_agreement(env):
    c, t = env
    spec = {
        "dataset": "cars",
        "labels": ["car", "bus"],
        "annotators": ["ann", "bob"],
        "batch_size": 4,
        "overlap": 4,
    }
    assert c.post("/api/v1/annotation-tasks", json=spec, headers=auth(t["ann"])).status_code == 403
    r = c.post("/api/v1/annotation-tasks", json=spec, headers=auth(t["op"]))
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["samples"] == 12 and task["overlap_samples"] == 4 and task["total"] == 16
    tid = task["id"]
    seen: dict[str, set[str]] = {"ann": set(), "bob": set()}
    overlap_labels: dict[str, dict[str, str]] = {"ann": {}, "bob": {}}
    active = ["ann", "bob"]
    while active:  # the two annotators work at the same time, one item each in turn
        for who in list(active):
            item = c.get(f"/api/v1/annotation-tasks/{tid}/next", headers=auth(t[who])).json()
            if item is None:
                active.remove(who)
                continue
            sid = item["sample_id"]
            seen[who].add(sid)
            lab = "car"
            if item["overlap"]:
                # bob disagrees with ann on every other overlap item
                lab = "bus" if who == "bob" and len(overlap_labels["bob"]) % 2 else "car"
                overlap_labels[who][sid] = lab
            r = c.post(
                f"/api/v1/annotation-tasks/{tid}/submit",
                json={"sample_id": sid, "label": lab},
                headers=auth(t[who]),
            )
            assert r.status_code == 200, r.text
    both = seen["ann"] & seen["bob"]
    assert len(both) == 4  # only the overlap sample was labeled twice
    assert len(seen["ann"] | seen["bob"]) == 12
    summary = c.get(f"/api/v1/annotation-tasks/{tid}", headers=auth(t["vic"])).json()
    assert summary["done"] == 16 and summary["progress"] == 1.0
    agr = c.get(f"/api/v1/annotation-tasks/{tid}/agreement", headers=auth(t["vic"])).json()
    assert agr["items"] == 4 and agr["raters"] == 2 and agr["raw_agreement"] == pytest.approx(0.5)
    assert agr["pairs"][0]["cohen_kappa"] is not None
    # submitting someone else's item / an unknown label
    other = next(iter(seen["bob"] - seen["ann"]))
    r = c.post(
        f"/api/v1/annotation-tasks/{tid}/submit",
        json={"sample_id": other, "label": "car"},
        headers=auth(t["ann"]),
    )
    assert r.status_code == 403
    mine = next(iter(seen["ann"] - seen["bob"]))
    r = c.post(
        f"/api/v1/annotation-tasks/{tid}/submit",
        json={"sample_id": mine, "label": "tram"},
        headers=auth(t["ann"]),
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "label"
    # review: annotators may not, operators may
    queue = c.get(f"/api/v1/annotation-tasks/{tid}/review", headers=auth(t["op"])).json()
    assert len(queue) == 16
    assert (
        c.get(f"/api/v1/annotation-tasks/{tid}/review", headers=auth(t["ann"])).status_code == 403
    )
    first, second = queue[0], queue[1]
    r = c.post(
        f"/api/v1/annotation-tasks/{tid}/review",
        json={"annotation_id": first["annotation_id"], "action": "correct", "label": "bus"},
        headers=auth(t["op"]),
    )
    assert (
        r.status_code == 200
        and r.json()["label"] == "bus"
        and r.json()["supersedes_id"] == first["annotation_id"]
    )
    r = c.post(
        f"/api/v1/annotation-tasks/{tid}/review",
        json={"annotation_id": second["annotation_id"], "action": "reject"},
        headers=auth(t["op"]),
    )
    assert r.status_code == 200 and r.json()["review"] == "rejected"
    # the catalog keeps every label: history of the corrected sample has both
    hist = c.get(
        f"/api/v1/datasets/cars/samples/{first['sample_id']}/annotations", headers=auth(t["vic"])
    ).json()
    assert {a["id"] for a in hist} >= {first["annotation_id"]}
    cur = c.get(
        f"/api/v1/datasets/cars/samples/{first['sample_id']}", headers=auth(t["vic"])
    ).json()
    assert cur["label"] == "bus"
    # close refuses while the rejected item is open
    r = c.post(f"/api/v1/annotation-tasks/{tid}/close", json={}, headers=auth(t["op"]))
    assert r.status_code == 409
    # task list (all kinds) shows it
    tasks = c.get("/api/v1/tasks?kind=annotation", headers=auth(t["vic"])).json()
    assert tasks["total"] == 1 and tasks["items"][0]["id"] == tid


def test_console_pages(env):
    c, t = env
    r = c.get("/datasets", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    r = c.post("/login", data={"token": "wrong", "next": "/datasets"}, follow_redirects=False)
    assert r.status_code == 401 and "Unknown or revoked" in r.text
    r = c.post("/login", data={"token": t["op"], "next": "/datasets/cars"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/datasets/cars"
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    page = c.get("/datasets/cars?per_page=24")
    assert page.status_code == 200 and page.text.count('class="thumb"') == 12
    assert "Nearest neighbours" not in page.text
    page = c.get("/datasets/cars?labeled=yes")
    assert "0 matching" in page.text
    sid = c.get("/api/v1/datasets/cars/samples?limit=1").json()["items"][0]["id"]  # cookie auth
    r = c.get(f"/datasets/cars/samples/{sid}")
    assert r.status_code == 200 and sid[:12] in r.text and "Nearest neighbours" not in r.text
    thumb = c.get(f"/api/v1/samples/{sid}/thumbnail?size=32")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    img = c.get(f"/api/v1/samples/{sid}/image")
    assert img.content == png_bytes(
        int(c.get(f"/api/v1/samples/{sid}").json()["source"].split("i")[-1].split(".")[0])
    )
    assert (
        c.get(f"/api/v1/samples/{sid}/image", headers={"If-None-Match": f'"{sid}"'}).status_code
        == 304
    )
    assert c.get("/tasks").status_code == 200
    # once the flywheel has embedded the samples, the sample page shows neighbours
    import numpy as np

    from cloud.flywheel._pipeline import EmbeddingStore

    ids = [x["id"] for x in c.get("/api/v1/datasets/cars/samples?limit=100").json()["items"]]
    store = EmbeddingStore(c.app.state.settings.data_dir / "embeddings" / "test-backbone", 4)
    vecs = np.array([[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 1.0, 0, 0], [0.5, 0.5, 0, 0]])
    store.add(ids[:4], vecs.astype(np.float32))
    r = c.get(f"/datasets/cars/samples/{ids[0]}")
    assert "Nearest neighbours" in r.text
    order = [x.split('"')[0] for x in r.text.split('id="neighbours"')[1].split('data-sample="')[1:]]
    assert order == [ids[1], ids[3], ids[2]]  # by cosine similarity to ids[0]
    assert "Nearest neighbours" not in c.get(f"/datasets/cars/samples/{ids[5]}").text
    r = c.get("/datasets/nope")
    assert r.status_code == 404 and "Error 404" in r.text
    r = c.get("/logout", follow_redirects=False)
    assert r.status_code == 303

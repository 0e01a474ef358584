"""The console in a real headless Chromium against `citybrain serve`: log in,
label 20 samples with the keyboard only, see the labels in the catalog through
the API, export COCO, watch live task progress."""

from __future__ import annotations

import io
import json
import uuid
import zipfile

import httpx
import pytest
import redis

from tests._api_helpers import ADMIN_TOKEN, auth, serve_subprocess, write_images
from tests.e2e._console import browser, cli, login, new_page  # noqa: F401 - fixture

#: one client with generous timeouts: the test machines are shared and slow
HTTP = httpx.Client(timeout=60)
pytestmark = [pytest.mark.e2e, pytest.mark.integration]
LABELS = ["car", "bus", "bike"]


def test_label_twenty_samples_with_the_keyboard(tmp_path, browser, artifacts_dir, redis_url):  # noqa: F811
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_images(tmp_path / "street", 24)
    cli(data_dir, "dataset", "import", str(tmp_path / "street"), "--name", "street")
    token = cli(data_dir, "token", "create", "ann", "--role", "annotator").stdout.strip()
    channel = f"cbtest:{uuid.uuid4().hex[:10]}:events"
    env = {"CITYBRAIN_REDIS_URL": redis_url, "CITYBRAIN_EVENTS_CHANNEL": channel}
    with serve_subprocess(data_dir, extra_env=env) as base:
        h = auth(ADMIN_TOKEN)
        samples = HTTP.get(f"{base}/api/v1/datasets/street/samples?limit=100", headers=h).json()
        assert samples["total"] == 24
        ids = [s["id"] for s in samples["items"]][:20]
        # a model suggested labels for the first five: Enter accepts them
        prelabels = {sid: {"label": "bus", "score": 0.9, "model_version": "m0"} for sid in ids[:5]}
        r = HTTP.post(
            f"{base}/api/v1/annotation-tasks",
            json={
                "dataset": "street",
                "labels": LABELS,
                "sample_ids": ids,
                "batch_size": 20,
                "prelabels": prelabels,
                "title": "street classes",
            },
            headers=h,
        )
        assert r.status_code == 201, r.text
        task_id = r.json()["id"]

        page = new_page(browser)
        login(page, base, token, "/datasets/street")
        assert page.locator(".thumb").count() == 24
        # thumbnails in view are served and decoded (the rest load lazily)
        page.wait_for_function(
            "[...document.querySelectorAll('.thumb img')].slice(0, 14)"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
        page.screenshot(path=str(artifacts_dir / "console_dataset.png"), full_page=True)
        page.click("a.label-link")
        page.wait_for_url(f"{base}/annotate/{task_id}")
        page.wait_for_selector("#annotator[data-state=item]")
        page.wait_for_function("document.getElementById('item-count').textContent === '20'")

        # arrows move without labeling
        first = page.get_attribute("#annotator", "data-sample")
        page.keyboard.press("ArrowRight")
        assert page.get_attribute("#annotator", "data-sample") != first
        page.keyboard.press("ArrowLeft")
        assert page.get_attribute("#annotator", "data-sample") == first

        expected: dict[str, str] = {}
        for n in range(20):
            sid = page.get_attribute("#annotator", "data-sample")
            assert sid not in expected
            if sid in prelabels:
                page.keyboard.press("Enter")  # accept the pre-label
                expected[sid] = "bus"
            else:
                k = n % 3
                page.keyboard.press(str(k + 1))
                expected[sid] = LABELS[k]
            page.wait_for_function(
                f"document.getElementById('done-count').textContent === '{n + 1}' "
                "&& document.getElementById('annotator').dataset.busy === '0'"
            )
            if n == 10:
                page.screenshot(path=str(artifacts_dir / "console_annotate.png"))
        page.wait_for_selector("#annotator[data-state=empty], #message.ok")
        assert "All" in page.inner_text("#message")

        # the labels are in the catalog
        got = HTTP.get(
            f"{base}/api/v1/datasets/street/samples?labeled=true&limit=100", headers=h
        ).json()
        assert got["total"] == 20
        assert {s["id"]: s["label"] for s in got["items"]} == expected
        assert all(s["annotator"] == "ann" for s in got["items"])
        accepted = HTTP.get(
            f"{base}/api/v1/datasets/street/samples/{ids[0]}/annotations", headers=h
        ).json()
        assert [a["source"] for a in accepted] == ["model", "human"]
        assert accepted[1]["prelabel_id"] == accepted[0]["id"]

        # export COCO through the API
        r = HTTP.get(f"{base}/api/v1/datasets/street/export?format=coco", headers=h, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            coco = json.loads(zf.read("annotations.json"))
        assert len(coco["images"]) == 24
        names = {c["id"]: c["name"] for c in coco["categories"]}
        labeled = [a for a in coco["annotations"]]
        assert len(labeled) == 20
        assert sorted(names[a["category_id"]] for a in labeled) == sorted(expected.values())
        (artifacts_dir / "console_export_coco.json").write_text(json.dumps(coco, indent=1))

        # the filtered browser shows only the labeled "bus" samples
        page.goto(f"{base}/datasets/street?label=bus")
        n_bus = sum(1 for v in expected.values() if v == "bus")
        assert page.locator(".thumb").count() == n_bus
        page.wait_for_selector("#ds-header[data-loaded='1']")
        assert page.inner_text("#labeled-count") == "20"

        # tasks page: live progress from Redis pub/sub over SSE
        page.goto(f"{base}/tasks")
        page.wait_for_selector("#live[data-state=live]")
        assert page.locator(f"#task-{task_id} .pct").inner_text() == "100%"
        fake = "job-" + uuid.uuid4().hex[:12]
        rc = redis.Redis.from_url(redis_url)
        try:
            for p in (0.3, 0.7):
                rc.publish(
                    channel,
                    json.dumps(
                        {
                            "type": "task",
                            "task_id": fake,
                            "kind": "training",
                            "status": "running",
                            "progress": p,
                            "message": f"epoch {int(p * 10)}",
                        }
                    ),
                )
                page.wait_for_function(
                    f"(document.querySelector('#task-{fake} progress') || {{}}).value === {p}"
                )
        finally:
            rc.close()
        assert page.locator(f"#task-{fake} .msg").inner_text() == "epoch 7"
        page.screenshot(path=str(artifacts_dir / "console_tasks.png"), full_page=True)

        # review pass as an admin, keyboard only: a = accept, r = reject
        page.goto(f"{base}/logout")
        login(page, base, ADMIN_TOKEN, f"/review/{task_id}")
        page.wait_for_function(
            "document.getElementById('review-info').textContent.includes('of 20')"
        )
        page.keyboard.press("a")
        page.wait_for_function(
            "document.getElementById('review-info').textContent.includes('of 19')"
        )
        page.keyboard.press("r")
        page.wait_for_function(
            "document.getElementById('review-info').textContent.includes('of 18')"
        )
        page.screenshot(path=str(artifacts_dir / "console_review.png"))
        summary = HTTP.get(f"{base}/api/v1/annotation-tasks/{task_id}", headers=h).json()
        assert summary["done"] == 19  # the rejected item went back to its annotator
        queue = HTTP.get(f"{base}/api/v1/annotation-tasks/{task_id}/review", headers=h).json()
        assert len(queue) == 18
        page.close()

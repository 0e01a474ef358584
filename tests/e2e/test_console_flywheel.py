"""The flywheel from the console, in a real headless Chromium against a real
`citybrain serve` and a real `citybrain worker` on a real Redis: import 40
labeled synthetic street scenes, click Train on the dataset page, watch the
live bar reach done, open the model (accuracy, confusion matrix, learning
curve, lineage), publish it through the gate after `citybrain store keygen`,
and see (and promote) the version on the store page."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import cv2
import httpx
import pytest

from cloud.flywheel._synthetic import CLASSES, street_scenes
from tests._api_helpers import auth, serve_subprocess
from tests.conftest import REPO
from tests.e2e._console import browser, cli, login, new_page  # noqa: F401 - fixture

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
HTTP = httpx.Client(timeout=60)


def _scenes(folder: Path, n: int, seed: int = 11) -> Path:
    folder.mkdir(parents=True)
    x, y = street_scenes(n, seed=seed)
    rows = ["path,label"]
    for i, (img, c) in enumerate(zip(x, y, strict=True)):
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        assert ok
        (folder / f"scene{i:03d}.png").write_bytes(buf.tobytes())
        rows.append(f"scene{i:03d}.png,{CLASSES[c]}")
    csv = folder.parent / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def test_train_publish_and_see_it_in_the_store(tmp_path, browser, artifacts_dir, redis_url):  # noqa: F811
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    csv = _scenes(tmp_path / "street", 40)
    cli(
        data_dir,
        "dataset",
        "import",
        str(tmp_path / "street"),
        "--name",
        "street",
        "--labels",
        str(csv),
    )
    _scenes(tmp_path / "unlabeled", 12, seed=12)  # a pool to mine from
    cli(data_dir, "dataset", "import", str(tmp_path / "unlabeled"), "--name", "street")
    token = cli(data_dir, "token", "create", "op", "--role", "operator").stdout.strip()

    prefix = f"cbtest:e2efly:{uuid.uuid4().hex[:10]}"
    env = {
        "CITYBRAIN_REDIS_URL": redis_url,
        "CITYBRAIN_JOB_PREFIX": prefix,
        "CITYBRAIN_EVENTS_CHANNEL": f"{prefix}:events",
        # no retained announcements of this throw-away store on the shared broker
        "CITYBRAIN_MQTT_URL": "mqtt://127.0.0.1:1",
    }
    worker_env = {**os.environ, **env, "CITYBRAIN_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    worker_env.pop("CITYBRAIN_DB_URL", None)
    worker_log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("citybrain")), "worker", "--name", "e2e-fly"],
        env=worker_env,
        cwd=REPO,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    try:
        with serve_subprocess(data_dir, extra_env=env) as base:
            st = HTTP.get(f"{base}/api/v1/datasets/street", headers=auth(token)).json()
            assert st["labeled"] >= 30 and set(st["labels"]) == set(CLASSES)

            page = new_page(browser)
            login(page, base, token, "/datasets/street")
            page.click("#train-btn")
            page.wait_for_selector("#job:not([hidden])")
            task_id = page.get_attribute("#job", "data-task")
            assert task_id
            # the live bar: queued -> running -> succeeded, driven by SSE / the task record
            try:
                page.wait_for_selector("#job[data-status=succeeded]", timeout=300_000)
            except Exception:
                page.screenshot(path=str(artifacts_dir / "console_flywheel_train_fail.png"))
                raise AssertionError(
                    f"training did not finish: {page.inner_text('#flywheel')}\n"
                    f"worker log: {(tmp_path / 'worker.log').read_text()[-3000:]}"
                ) from None
            assert page.get_attribute("#job", "data-live") == "1"  # updates came over SSE
            assert page.eval_on_selector("#job-bar", "b => b.value") == 1
            assert page.inner_text("#job-pct") == "100%"
            page.screenshot(
                path=str(artifacts_dir / "console_flywheel_trained.png"), full_page=True
            )
            task = HTTP.get(f"{base}/api/v1/tasks/{task_id}", headers=auth(token)).json()
            assert task["status"] == "succeeded" and task["kind"] == "training"
            model_id = task["result"]["model_id"]

            # the model page: accuracy, plots, lineage
            page.click("#job-model-link")
            page.wait_for_url(f"{base}/models/{model_id}")
            acc = float(page.inner_text("#accuracy"))
            assert acc == pytest.approx(task["result"]["accuracy"], abs=1e-3)
            page.wait_for_function(
                "['confusion', 'learning-curve'].every(id => {"
                " const i = document.getElementById(id); return i.complete && i.naturalWidth > 0; })"
            )
            assert page.locator("#per-class tbody tr").count() == len(CLASSES)
            assert page.get_attribute("#lineage-task", "href") == f"/tasks#task-{task_id}"
            assert page.inner_text("#lineage-dataset").startswith("street@")
            page.screenshot(path=str(artifacts_dir / "console_flywheel_model.png"), full_page=True)

            # publishing needs the store key: create it, then publish through the gate
            cli(data_dir, "store", "keygen")
            page.click("#publish-btn")
            page.wait_for_selector("#publish-message.ok")
            assert "Published street 1.0.0 to canary" in page.inner_text("#publish-message")
            page.screenshot(
                path=str(artifacts_dir / "console_flywheel_published.png"), full_page=True
            )

            # the store page lists it; Promote moves it to stable
            page.click("#store-link")
            page.wait_for_url(f"{base}/store")
            row = page.locator('#algo-street tr.version[data-version="1.0.0"]')
            assert row.count() == 1
            assert "canary" in row.inner_text()
            row.locator(".promote-channel").select_option("stable")
            row.locator(".promote-btn").click()
            page.wait_for_selector('#algo-street .channel[data-channel="stable"]')
            assert "stable → 1.0.0" in page.inner_text("#algo-street")
            page.screenshot(path=str(artifacts_dir / "console_flywheel_store.png"), full_page=True)
            store = HTTP.get(f"{base}/api/v1/store/algorithms/street", headers=auth(token)).json()
            assert store["channels"] == {"canary": "1.0.0", "stable": "1.0.0"}

            # the same labels again: the candidate is not better, Publish shows why it is refused
            page.goto(f"{base}/datasets/street")
            page.click("#train-btn")
            page.wait_for_selector("#job[data-status=succeeded]", timeout=300_000)
            page.click("#job-model-link")
            page.wait_for_selector("#publish-btn")
            assert "refuse" in page.inner_text("#gate")
            page.wait_for_function(
                "['confusion', 'learning-curve'].every(id => {"
                " const i = document.getElementById(id); return i.complete && i.naturalWidth > 0; })"
            )
            page.click("#publish-btn")
            page.wait_for_selector("#publish-message.err")
            assert "gate refuses street 1.1.0" in page.inner_text("#publish-message")
            page.screenshot(path=str(artifacts_dir / "console_flywheel_gate.png"), full_page=True)
            store = HTTP.get(f"{base}/api/v1/store/algorithms/street", headers=auth(token)).json()
            assert [v["version"] for v in store["versions"]] == ["1.0.0"]

            # Mine: the published model scores the unlabeled pool; the picks open an annotation task
            page.goto(f"{base}/datasets/street")
            page.fill("#mine-budget", "5")
            page.select_option("#mine-strategy", "auto")
            page.click("#mine-btn")
            page.wait_for_selector("#job[data-status=succeeded]", timeout=300_000)
            mining_id = page.get_attribute("#job", "data-task")
            page.click("#job-annotate-link")
            page.wait_for_url(f"{base}/annotate/*")
            mined = HTTP.get(f"{base}/api/v1/mining/{mining_id}", headers=auth(token)).json()
            assert (
                mined["selected"] == 5
                and mined["annotation_task_id"] == page.url.rsplit("/", 1)[-1]
            )
            assert all(i["reason"] and i["prelabel"] in CLASSES for i in mined["items"])
            page.screenshot(path=str(artifacts_dir / "console_flywheel_mine.png"), full_page=True)
    finally:
        worker.terminate()
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        worker_log.close()
        import redis

        r = redis.Redis.from_url(redis_url)
        keys = list(r.scan_iter(f"{prefix}*"))
        if keys:
            r.delete(*keys)
        r.close()

"""Upload and box annotation in headless Chromium: upload images with the
console's form, pick a class with a number key, draw a box with the mouse,
submit with Enter; the box is in the catalog in image pixels."""

from __future__ import annotations

import httpx
import pytest

from tests._api_helpers import ADMIN_TOKEN, NO_REDIS, auth, serve_subprocess, write_images
from tests.e2e._console import browser, cli, login, new_page  # noqa: F401 - fixture

#: one client with generous timeouts: the test machines are shared and slow
HTTP = httpx.Client(timeout=60)
pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_draw_one_box(tmp_path, browser, artifacts_dir):  # noqa: F811
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    files = write_images(tmp_path / "imgs", 2)
    token = cli(data_dir, "token", "create", "bea", "--role", "annotator").stdout.strip()
    with serve_subprocess(data_dir, extra_env={"CITYBRAIN_REDIS_URL": NO_REDIS}) as base:
        h = auth(ADMIN_TOKEN)
        # the annotator uploads the images with the console's upload form
        page = new_page(browser)
        login(page, base, token, "/datasets")
        page.fill("#upload-dataset", "boxes")
        page.set_input_files("#upload-files", [str(f) for f in files])
        page.click("#upload-submit")
        page.wait_for_selector("#upload-result.ok, #upload-result.err")
        assert "2 added" in page.inner_text("#upload-result"), page.inner_text("#upload-result")
        r = HTTP.post(
            f"{base}/api/v1/annotation-tasks",
            json={"dataset": "boxes", "kind": "boxes", "labels": ["car", "person"]},
            headers=h,
        )
        assert r.status_code == 201, r.text
        task_id = r.json()["id"]
        page.goto(f"{base}/annotate/{task_id}")
        page.wait_for_selector("#annotator[data-state=item]")
        page.wait_for_function("document.getElementById('image').naturalWidth > 0")
        sid = page.get_attribute("#annotator", "data-sample")
        page.keyboard.press("2")  # next box is a "person"
        canvas = page.locator("#overlay").bounding_box()
        assert canvas and canvas["width"] > 100
        x0, y0 = canvas["x"] + canvas["width"] * 0.25, canvas["y"] + canvas["height"] * 0.25
        x1, y1 = canvas["x"] + canvas["width"] * 0.75, canvas["y"] + canvas["height"] * 0.75
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
        page.mouse.move(x1, y1, steps=5)
        page.mouse.up()
        page.wait_for_selector("#annotator[data-boxes='1']")
        page.screenshot(path=str(artifacts_dir / "console_boxes.png"))
        page.keyboard.press("Enter")
        page.wait_for_function("document.getElementById('done-count').textContent === '1'")

        view = HTTP.get(f"{base}/api/v1/datasets/boxes/samples/{sid}", headers=h).json()
        assert view["annotation_kind"] == "boxes" and len(view["boxes"]) == 1
        box = view["boxes"][0]
        w, h_ = view["width"], view["height"]
        assert box["label"] == "person"
        # drawn over the middle half of the displayed image -> the middle half in pixels
        assert box["x1"] == pytest.approx(w * 0.25, abs=2) and box["x2"] == pytest.approx(
            w * 0.75, abs=2
        )
        assert box["y1"] == pytest.approx(h_ * 0.25, abs=2) and box["y2"] == pytest.approx(
            h_ * 0.75, abs=2
        )
        page.close()

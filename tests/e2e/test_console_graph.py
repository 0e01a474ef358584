"""The graph and assignments pages in a real headless Chromium against a real
`citybrain serve`: seed a city graph with the CLI (seed ontology, the example instance
with its zones, cameras, algorithms, devices and policies, a camera whose scenes come
from a scene classifier), open the zone, see cameras, scenes and algorithms in the
picture and the list, confirm an inferred scene as an operator, open the assignments,
compute a preview plan, see the utilisation bars, click "why?" next to a served and an
unserved demand and read the explanations; then the plan the re-planning service
saved replaces the preview."""

from __future__ import annotations

import pytest

import scheduler as sch
from tests._api_helpers import serve_subprocess
from tests.conftest import REPO
from tests.e2e._console import browser, cli, login, new_page  # noqa: F401 - fixture

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
EXAMPLE = REPO.parent / "shared" / "schemas" / "schedule-instance.example.json"


def test_zone_graph_assignments_and_why(tmp_path, browser, artifacts_dir):  # noqa: F811
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cli(data_dir, "graph", "seed")
    cli(data_dir, "graph", "import-instance", str(EXAMPLE))
    cli(data_dir, "graph", "add-camera", "cam-004", "--zone", "longhua/street-12")
    cli(data_dir, "graph", "record-scenes", "cam-004", "--score", "street=0.3,sidewalk=0.4")
    token = cli(data_dir, "token", "create", "op", "--role", "operator").stdout.strip()

    with serve_subprocess(data_dir) as base:
        page = new_page(browser)
        login(page, base, token, "/graph")
        # the tree and the picker
        page.click('#zone-tree a[data-zone="longhua"]')
        page.wait_for_url(f"{base}/graph/longhua")
        assert page.inner_text("#zone-name") == "longhua"
        rows = page.locator("#cameras tbody tr")
        assert rows.count() == 3
        cam2 = page.locator('#cameras tr[data-camera="cam-002"]')
        assert "sea_front" in cam2.locator(".scenes").inner_text()
        assert cam2.locator('.algorithm[data-algorithm="drowning"]').count() == 1
        assert "camera:cam-002 → scene:sea_front → event:person_in_water ← algorithm:drowning" in (
            cam2.locator(".algorithms").inner_text()
        )
        # the picture: the four layers, with the drowning path
        pic = page.locator("#kg-picture")
        for key in (
            "camera:cam-002",
            "scene:sea_front",
            "event:person_in_water",
            "algorithm:drowning",
        ):
            assert pic.locator(f'g.node[data-key="{key}"]').count() == 1, key
        pic.locator('g.node[data-key="camera:cam-002"]').hover()
        assert pic.locator("path.edge.hl").count() == 3  # sees, may_have, detects
        # cam-004: inferred below the threshold, so nothing applies yet
        cam4 = page.locator('#cameras tr[data-camera="cam-004"]')
        assert "none applies" in cam4.inner_text()
        page.screenshot(path=str(artifacts_dir / "console_graph_zone.png"), full_page=True)

        # the operator confirms the classifier's "street": manhole_missing now applies
        cam4.locator('button.scene-act[data-act="confirm"][data-scene="street"]').click()
        page.wait_for_selector(
            '#cameras tr[data-camera="cam-004"] .algorithm[data-algorithm="manhole_missing"]'
        )

        # the picker goes to a sub-zone
        page.fill("#zone-input", "longgang/tower-a")
        page.click("#zone-picker button[type=submit]")
        page.wait_for_url(f"{base}/graph/longgang/tower-a")
        assert page.locator("#cameras tbody tr").count() == 1

        # assignments: no saved plan -> a labelled preview
        page.click('header nav a[href="/assignments"]')
        page.wait_for_url(f"{base}/assignments")
        assert page.get_attribute("#plan-source", "data-kind") == "none"
        page.click("#preview-btn")
        page.wait_for_url(f"{base}/assignments?preview=1")
        assert page.get_attribute("#plan-source", "data-kind") == "preview"
        assert "Preview plan" in page.inner_text("#plan-source")
        e1 = page.locator('section.device[data-device="edge-01"]')
        bars = e1.locator("svg.bars g.bar")
        assert bars.count() == 3
        widths = [float(w) for w in e1.locator("svg.bars rect.fill").evaluate_all(
            "rs => rs.map(r => r.getAttribute('width'))")]  # fmt: skip
        assert all(w > 0 for w in widths), widths  # drowning runs there: all three used
        # "why?" on a served demand: where it runs and why not elsewhere
        served = e1.locator('tr[data-camera="cam-002"] button.why[data-event="person_in_water"]')
        served.click()
        box = page.locator("tr.why-row .why-box").first
        box.wait_for()
        assert box.get_attribute("data-status") == "served"
        text = box.inner_text()
        assert "person_in_water is watched on cam-002 by drowning" in text
        assert "edge-01 (gpu-sm87): runs drowning here" in text
        assert "placed" in text and "← algorithm:drowning" in text
        # "why?" on an unserved demand: cam-004 is reached by no device
        un = page.locator('#unserved tr[data-camera="cam-004"][data-event="manhole_cover_missing"]')
        assert "no reachable device" in un.inner_text()
        un.locator("button.why").click()
        ubox = page.locator("#unserved tr.why-row .why-box")
        ubox.wait_for()
        assert ubox.get_attribute("data-status") == "unserved"
        assert "No device reaches cam-004" in ubox.inner_text()
        assert "no_device" in ubox.inner_text()
        page.screenshot(path=str(artifacts_dir / "console_assignments_why.png"), full_page=True)
        un.locator("button.why").click()  # a second click hides it
        assert page.locator("#unserved tr.why-row").count() == 0

        # the re-planning service saves a plan: it replaces the preview
        plan = sch.Plan.model_validate(
            {
                "assignments": [
                    {
                        "camera": "cam-003",
                        "algorithm": "lobby_cargo",
                        "version": "2.0.0",
                        "device": "edge-02",
                    },
                    {
                        "camera": "cam-002",
                        "algorithm": "drowning",
                        "version": "0.9.1",
                        "device": "edge-01",
                    },
                ],  # fmt: skip
                "served": [{"camera": "cam-003", "event": "cargo_carried"}],
                "unserved": [],
                "objective": 1,
                "solver": {"name": "auto/heuristic", "seconds": 0.2, "optimal": True, "bound": 1},
            }
        )
        sch.save_state(
            data_dir / "replan-state.json", sch.PlannerState(plan=plan, graph_revision=3)
        )
        page.goto(f"{base}/assignments")
        assert page.get_attribute("#plan-source", "data-kind") == "saved"
        e2 = page.locator('section.device[data-device="edge-02"]')
        e2.locator('button.why[data-event="cargo_carried"]').click()
        box = e2.locator(".why-box")
        box.wait_for()
        assert (
            "cargo_carried is watched on cam-003 by lobby_cargo 2.0.0 on edge-02"
            in box.inner_text()
        )
        # an assignment serving no demand (e.g. a pin): "why?" explains the pair
        e1 = page.locator('section.device[data-device="edge-01"]')
        e1.locator('button.why[data-algorithm="drowning"]').click()
        pbox = e1.locator(".why-box")
        pbox.wait_for()
        assert "drowning runs on cam-002 on device edge-01" in pbox.inner_text()
        page.screenshot(path=str(artifacts_dir / "console_assignments_saved.png"), full_page=True)

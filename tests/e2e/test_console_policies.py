"""The policies page in a real headless Chromium against a real `citybrain serve`:
the example instance's policies are listed with whether each is active now; an
operator adds a night policy through the form, sees a clear error for an unknown
event (nothing added), and removes a policy; a viewer sees no form."""

from __future__ import annotations

import pytest

import knowledge_graph as kg
from cloud.catalog.db import make_engine
from tests._api_helpers import serve_subprocess
from tests.conftest import REPO
from tests.e2e._console import browser, cli, login, new_page  # noqa: F401 - fixture

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
EXAMPLE = REPO.parent / "shared" / "schemas" / "schedule-instance.example.json"


def test_operator_adds_and_removes_policies(tmp_path, browser, artifacts_dir):  # noqa: F811
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cli(data_dir, "graph", "seed")
    cli(data_dir, "graph", "import-instance", str(EXAMPLE))
    op = cli(data_dir, "token", "create", "op", "--role", "operator").stdout.strip()
    viewer = cli(data_dir, "token", "create", "v", "--role", "viewer").stdout.strip()
    engine = make_engine(f"sqlite:///{data_dir / 'catalog.db'}")
    before = set(kg.load(engine).policies)
    assert before

    with serve_subprocess(data_dir) as base:
        page = new_page(browser)
        login(page, base, op, "/policies")
        assert page.locator("tr.policy").count() == len(before)
        assert page.locator("tr.policy .badge.active").count() == len(before)  # always-on

        page.fill("#policy-form input[name=id]", "night-cargo")
        page.fill("#policy-form input[name=zone]", "longgang/*")
        page.fill("#policy-form input[name=events]", "cargo_carried")
        page.fill("#policy-form input[name=priority]", "2")
        page.fill("#policy-form input[name=hours]", "22-6")
        page.fill("#policy-form input[name=days]", "mon-fri")
        page.click("#add-policy")
        page.wait_for_selector('tr.policy[data-policy="night-cargo"]')
        row = page.locator('tr.policy[data-policy="night-cargo"]')
        assert "22-6" in row.inner_text() and "mon, tue, wed, thu, fri" in row.inner_text()
        page.screenshot(path=str(artifacts_dir / "console_policies.png"), full_page=True)

        # an unknown event: a clear message, nothing added
        page.fill("#policy-form input[name=id]", "bad")
        page.fill("#policy-form input[name=zone]", "longgang/*")
        page.fill("#policy-form input[name=events]", "alien_landing")
        page.click("#add-policy")
        page.wait_for_selector("#policy-message.err")
        assert "alien_landing" in page.inner_text("#policy-message")
        assert set(kg.load(engine).policies) == before | {"night-cargo"}

        page.on("dialog", lambda d: d.accept())
        page.click('button.remove-policy[data-policy="night-cargo"]')
        page.wait_for_selector('tr.policy[data-policy="night-cargo"]', state="detached")
        assert set(kg.load(engine).policies) == before

        page.context.clear_cookies()
        login(page, base, viewer, "/policies")
        assert page.locator("#policy-form").count() == 0
        assert page.locator("button.remove-policy").count() == 0
    engine.dispose()

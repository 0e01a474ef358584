"""Shared bits of the console e2e tests: a headless Chromium and a served,
seeded citybrain."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CITYBRAIN_DATA_DIR": str(data_dir)}
    env.pop("CITYBRAIN_DB_URL", None)
    exe = str(Path(sys.executable).parent / "citybrain")
    res = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"citybrain {' '.join(args)}: {res.stderr}"
    return res


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/setup.sh does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def new_page(browser):  # type: ignore[no-untyped-def]
    """A page with generous timeouts: CI machines are shared and slow."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(90_000)
    return page


def login(page, base: str, token: str, next_url: str = "/datasets") -> None:
    page.goto(f"{base}/login?next={next_url}")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url(f"{base}{next_url}")

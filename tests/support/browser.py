"""A real browser for the console's tests: Debian's chromium driven by Playwright.

Playwright's own browser download cannot work here, so it launches the system
``chromium`` through ``executable_path`` (``make test`` installs the package).
Helpers sign in, scan a page with axe-core and save screenshots to
``build/console-screenshots/`` (or ``AETHER_SCREENSHOT_DIR``), kept by CI as
artefacts; ``docs/images/console/`` holds copies for the docs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

__all__ = [
    "SCREENSHOTS",
    "axe_violations",
    "chromium",
    "new_console",
    "screenshot",
    "sign_in",
]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("AETHER_SCREENSHOT_DIR", ROOT / "build/console-screenshots"))
# what a closed network needs: no background connections Chromium would try at start
_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "the console's browser tests need Debian's chromium: `apt-get install chromium` "
            "(`make test` installs it through scripts/system-deps.sh)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True, args=_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_console(browser: Browser, *, width: int = 1280, height: int = 900) -> BrowserContext:
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(15_000)
    return context


def sign_in(page: Page, base_url: str, token: str, next_path: str = "/ui/") -> None:
    page.goto(f"{base_url}/ui/login?next={next_path}")
    page.fill("#token", token)
    page.click("#token-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui/.*"))
    assert "/ui/login" not in page.url, page.content()[:2000]


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """The serious and critical accessibility violations axe-core finds on the page."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    found: list[dict[str, Any]] = results.response.get("violations", [])
    return [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n.get("html", "")[:200] for n in v.get("nodes", [])[:3]],
        }
        for v in found
        if v.get("impact") in ("serious", "critical")
    ]

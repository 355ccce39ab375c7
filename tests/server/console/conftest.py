"""The console tests' fixtures: the server of ``tests/server/conftest.py`` and a browser."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser

from tests.support.browser import chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One browser per test module. Not per session: while Playwright's sync API is
    started it holds an event loop on the test thread, so the async tests of other
    modules (pytest-asyncio) could not run their loops after it."""
    with chromium() as running:
        yield running

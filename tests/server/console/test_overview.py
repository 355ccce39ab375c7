"""The overview: the first-run guide on an empty cluster, live updates, and the stale banner."""

from __future__ import annotations

from pathlib import Path

import httpx
from playwright.sync_api import Browser, expect

from aether.ports import free_port
from tests.support.api import bearer, join_node
from tests.support.browser import axe_violations, new_console, screenshot, sign_in
from tests.support.server import running_server


def _register(base_url: str, join_token: str, node: str) -> None:
    """A node joins and registers, as a node daemon does (without running anything)."""
    credential = join_node(base_url, join_token, node)
    answer = httpx.post(
        f"{base_url}/api/v1/nodes/register",
        headers=bearer(credential),
        json={
            "id": node,
            "capabilities": {"cpus": 2, "memory_mb": 2048, "drivers": ["process"]},
            "router_url": "http://127.0.0.1:9",
        },
    )
    assert answer.status_code == 200, answer.text


def test_an_empty_cluster_shows_the_guide_and_a_joining_node_appears_live(
    tmp_path: Path, browser: Browser
) -> None:
    with running_server(tmp_path / "server") as server:
        context = new_console(browser)
        page = context.new_page()
        sign_in(page, server.base_url, server.admin_token)
        guide = page.locator(".first-run")
        expect(guide).to_be_visible()
        expect(guide).to_contain_text("Join a node")
        expect(guide).to_contain_text("aether deploy examples/hello-python")
        expect(page.locator("body")).to_have_attribute("data-live", "live")
        screenshot(page, "first-run")
        assert axe_violations(page) == []

        _register(server.base_url, server.join_token, "fresh-node")
        # no reload: the node_joined event re-reads the nodes table
        expect(page.locator("tr[data-node='fresh-node']")).to_be_visible(timeout=5_000)
        expect(page.locator("tr[data-node='fresh-node']")).to_contain_text("ready")
        context.close()


def test_a_page_that_loses_the_stream_says_so_and_recovers(
    tmp_path: Path, browser: Browser
) -> None:
    port = free_port()
    context = new_console(browser)
    page = context.new_page()
    body = page.locator("body")
    with running_server(tmp_path / "server", port=port) as server:
        sign_in(page, server.base_url, server.token("viewer"))
        expect(body).to_have_attribute("data-live", "live")
        expect(page.locator("#stale")).to_be_hidden()
    # the server is gone: the page says what it shows may be out of date
    expect(page.locator("#stale")).to_be_visible(timeout=10_000)
    expect(body).to_have_attribute("data-live", "stale")
    with running_server(tmp_path / "server", port=port) as server:
        _register(server.base_url, server.join_token, "while-away")
        # it reconnects by itself and re-reads what changed while it was cut off
        expect(body).to_have_attribute("data-live", "live", timeout=15_000)
        expect(page.locator("#stale")).to_be_hidden()
        expect(page.locator("tr[data-node='while-away']")).to_be_visible(timeout=5_000)
        context.close()


def test_the_overview_works_on_a_phone_sized_screen(tmp_path: Path, browser: Browser) -> None:
    with running_server(tmp_path / "server") as server:
        _register(server.base_url, server.join_token, "phone-node")
        context = new_console(browser, width=390, height=844)
        page = context.new_page()
        sign_in(page, server.base_url, server.token("viewer"))
        expect(page.locator("tr[data-node='phone-node']")).to_be_visible()
        # nothing wider than the screen but the tables, which scroll inside their box
        overflow = page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= 390, overflow
        assert axe_violations(page) == []
        screenshot(page, "overview-phone")
        context.close()

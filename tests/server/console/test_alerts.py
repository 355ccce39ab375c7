"""The alerts page: a tenant's alerts and silences, no one else's (server-rendered), and
a new alert appearing without a reload (the ``alert`` events of the stream, in a browser)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.support.api import bearer, join_node, unique
from tests.support.browser import new_console, screenshot, sign_in
from tests.support.console import signed_in
from tests.support.server import RunningServer, running_server
from tests.support.telemetry import node_sample


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("aether-console-alerts")
    rules = data / "rules.json"
    rules.write_text(json.dumps([{"name": "DiskFree", "kind": "disk_free", "threshold": 0.15}]))
    with running_server(
        data / "server", lease_ttl=60.0, alert_rules_file=rules, alert_interval=0.2
    ) as srv:
        yield srv


def _full_disk(server: RunningServer, node: str, stop: threading.Event) -> None:
    """A node that joins, registers and pushes a sample with 1 % of its disk free every
    0.2 s until ``stop`` (a thread: the browser's sync API holds the test's loop)."""
    credential = join_node(server.base_url, server.join_token, node)
    with httpx.Client(base_url=server.base_url, headers=bearer(credential)) as http:
        made = http.post(
            "/api/v1/nodes/register",
            json={
                "id": node,
                "capabilities": {"cpus": 2, "memory_mb": 2048, "drivers": ["process"]},
                "router_url": "http://127.0.0.1:9",
            },
        )
        assert made.status_code == 200, made.text
        seq = 0
        while not stop.is_set():
            seq += 1
            sample = node_sample(node, seq, disk_used_mb=9.9)
            http.post(f"/api/v1/nodes/{node}/metrics", content=sample.model_dump_json())
            stop.wait(0.2)


def test_a_new_alert_appears_without_a_reload(server: RunningServer, browser: Browser) -> None:
    context = new_console(browser)
    page = context.new_page()
    sign_in(page, server.base_url, server.token("operator"), "/ui/alerts")
    expect(page.locator("body")).to_have_attribute("data-live", "live")
    node = unique("full")
    stop = threading.Event()
    pusher = threading.Thread(target=_full_disk, args=(server, node, stop), daemon=True)
    pusher.start()
    try:
        row = page.locator("tr[data-alert]", has_text=f"node={node}")
        expect(row).to_be_visible(timeout=10_000)  # no reload: the alert event re-read it
        expect(row).to_have_attribute("data-state", "firing", timeout=10_000)
        expect(row).to_contain_text("DiskFree")
        screenshot(page, "alerts-live")
    finally:
        stop.set()
        pusher.join(timeout=5)
        context.close()


def test_the_page_lists_the_tenant_s_silences_only(server: RunningServer) -> None:
    tenant, other = unique("acme"), unique("b")
    comment = unique("deploying")
    made = httpx.post(
        f"{server.base_url}/api/v1/alerts/silences",
        json={"matchers": {"alertname": "CrashLooping", "app": "web"}, "comment": comment},
        headers=bearer(server.token("operator", tenant)),
    )
    assert made.status_code == 201, made.text
    with signed_in(server.base_url, server.token("viewer", tenant)) as client:
        page = client.get("/ui/alerts")
        assert page.status_code == 200, page.text
        assert "<h1>Alerts</h1>" in page.text and "No alert." in page.text
        assert comment in page.text and "alertname=CrashLooping" in page.text
        assert 'href="/ui/alerts" aria-current="page"' in page.text
        firing = client.get("/ui/alerts", params={"state": "firing"})
        assert '<option value="firing" selected>' in firing.text
    with signed_in(server.base_url, server.token("viewer", other)) as client:
        theirs = client.get("/ui/alerts")
        assert theirs.status_code == 200 and comment not in theirs.text

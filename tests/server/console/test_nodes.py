"""The node pages: /ui/nodes and /ui/nodes/{node}, with drain and undrain, for each role.

Nodes are fake but live (``LiveNode``: they keep their lease, push telemetry every
half second and play their instances' lifecycle over the real API).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.api import bearer, unique
from tests.support.browser import axe_violations, new_console, screenshot, sign_in
from tests.support.console import csrf_of, signed_in
from tests.support.live_node import LiveNode, deploy_app
from tests.support.server import RunningServer
from tests.support.waiting import wait_for

ROLES = ("viewer", "operator", "admin")


@pytest.fixture(scope="module")
def pair(server: RunningServer) -> Iterator[tuple[str, str]]:
    """Two live nodes of this module's own."""
    with LiveNode(server, unique("cn")) as a, LiveNode(server, unique("cn")) as b:
        yield a.name, b.name


def node_state(server: RunningServer, node: str) -> str:
    answer = httpx.get(f"{server.base_url}/api/v1/nodes", headers=bearer(server.admin_token))
    return str(next(n["state"] for n in answer.json() if n["id"] == node))


def undrain(server: RunningServer, node: str) -> None:
    httpx.post(
        f"{server.base_url}/api/v1/nodes/{node}/undrain", headers=bearer(server.admin_token)
    ).raise_for_status()


def row_of(html: str, node: str) -> str:
    found = re.search(rf'<tr data-node="{re.escape(node)}">(.*?)</tr>', html, re.S)
    assert found, f"no row for {node}"
    return found.group(1)


@pytest.mark.parametrize("role", ROLES)
def test_every_role_sees_the_nodes(server: RunningServer, pair: tuple[str, str], role: str) -> None:
    with signed_in(server.base_url, server.token(role)) as client:
        page = client.get("/ui/nodes")
    assert page.status_code == 200, page.text
    for node in pair:
        row = row_of(page.text, node)
        assert f'href="/ui/nodes/{node}"' in row
        assert "state-ready" in row
        assert "process" in row
        assert f'data-name="{node}" data-field="cpu"' in row


def test_nodes_filter_by_state_and_driver(server: RunningServer, pair: tuple[str, str]) -> None:
    drained, other = pair
    with signed_in(server.base_url, server.token("operator")) as client:
        client.post(f"/ui/nodes/{drained}/drain", data={"csrf": csrf_of(client)})
        try:
            draining = client.get("/ui/nodes?state=draining").text
            assert f'data-node="{drained}"' in draining
            assert f'data-node="{other}"' not in draining
            assert '<option value="draining" selected>' in draining
            ready = client.get("/ui/nodes", params={"state": "ready", "driver": "process"}).text
            assert f'data-node="{other}"' in ready and f'data-node="{drained}"' not in ready
            none = client.get("/ui/nodes?driver=microvm").text
            assert "No node matches these filters." in none
        finally:
            undrain(server, drained)


def test_an_unknown_state_filter_is_a_400_page(server: RunningServer) -> None:
    with signed_in(server.base_url, server.token("viewer")) as client:
        page = client.get("/ui/nodes?state=sleeping")
    assert page.status_code == 400
    assert "Unknown node state 'sleeping'" in unescape(page.text)
    assert page.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize("role", ROLES)
def test_a_node_page_shows_its_handshake_charts_and_instances(
    server: RunningServer, pair: tuple[str, str], role: str
) -> None:
    node = pair[0]
    with signed_in(server.base_url, server.token(role)) as client:
        page = client.get(f"/ui/nodes/{node}")
    assert page.status_code == 200, page.text
    html = page.text
    assert f"<h1>Node {node}</h1>" in html
    assert 'data-feature="telemetry"' in html  # what the handshake turned on
    assert "6.1.0" in html  # the kernel it reported
    for chart in ("cpu", "memory", "disk", "network"):
        assert f'data-testid="chart-{chart}"' in html
    assert 'data-range="300"' in html
    assert 'aria-current="true">Last 5 min (live)' in html
    button = re.search(r'<button type="submit" class="danger"[^>]*>Drain</button>', html)
    assert button, html
    assert ("disabled" in button.group(0)) == (role == "viewer")


def test_the_range_is_kept_in_the_query_string(
    server: RunningServer, pair: tuple[str, str]
) -> None:
    with signed_in(server.base_url, server.token("viewer")) as client:
        wide = client.get(f"/ui/nodes/{pair[0]}?range=86400")
        bad = client.get(f"/ui/nodes/{pair[0]}?range=5")
    assert wide.status_code == 200
    assert wide.text.count('data-range="86400"') == 4
    assert 'aria-current="true">Last 24 h' in wide.text
    assert bad.status_code == 400
    assert "Unknown chart range 5" in bad.text


def test_a_node_page_lists_only_the_visitors_instances(
    server: RunningServer, pair: tuple[str, str]
) -> None:
    app = unique("napp")
    deploy_app(server, app, instances=2)

    def shown(token: str) -> str:
        with signed_in(server.base_url, token) as client:
            return "".join(client.get(f"/ui/nodes/{node}").text for node in pair)

    def both_active() -> str | None:
        html = shown(server.token("viewer"))
        return html if html.count("state-active") >= 2 and f"/ui/apps/{app}" in html else None

    html = wait_for(both_active, 20, "the app's two instances ACTIVE on the node pages")
    assert html.count(f'href="/ui/apps/{app}"') == 2
    other = shown(server.new_tenant())  # another tenant sees the nodes, not these instances
    assert f"/ui/apps/{app}" not in other
    assert "No instance of yours runs on this node." in other


def test_an_unknown_node_is_a_404_page(server: RunningServer) -> None:
    with signed_in(server.base_url, server.token("admin")) as client:
        page = client.get("/ui/nodes/no-such-node")
    assert page.status_code == 404
    assert "There is no node 'no-such-node'." in unescape(page.text)
    assert "<title>Error 404" in page.text


def test_an_operator_drains_and_undrains_a_node(
    server: RunningServer, pair: tuple[str, str]
) -> None:
    node = pair[1]
    with signed_in(server.base_url, server.token("operator")) as client:
        csrf = csrf_of(client)
        drained = client.post(f"/ui/nodes/{node}/drain", data={"csrf": csrf})
        assert drained.status_code == 303
        assert drained.headers["location"].startswith(f"/ui/nodes/{node}?done=")
        assert node_state(server, node) == "draining"
        page = client.get(drained.headers["location"]).text
        assert f"Node {node} is draining" in page
        assert ">Undrain</button>" in page
        undrained = client.post(f"/ui/nodes/{node}/undrain", data={"csrf": csrf})
        assert undrained.status_code == 303
    assert node_state(server, node) == "ready"


def test_a_drain_without_csrf_is_refused_and_changes_nothing(
    server: RunningServer, pair: tuple[str, str]
) -> None:
    node = pair[0]
    with signed_in(server.base_url, server.token("admin")) as client:
        answer = client.post(f"/ui/nodes/{node}/drain", data={"csrf": "forged"})
        missing = client.post(f"/ui/nodes/{node}/drain")
    assert answer.status_code == 403 and missing.status_code == 403
    assert "CSRF" in answer.text
    assert node_state(server, node) == "ready"


def test_a_viewer_cannot_drain(server: RunningServer, pair: tuple[str, str]) -> None:
    node = pair[0]
    with signed_in(server.base_url, server.token("viewer")) as client:
        answer = client.post(f"/ui/nodes/{node}/drain", data={"csrf": csrf_of(client)})
    assert answer.status_code == 403
    assert "<title>Error 403" in answer.text
    assert "operator" in answer.text  # the API's own message: the role it needs
    assert node_state(server, node) == "ready"


def test_another_tenants_operator_cannot_drain_a_shared_node(
    server: RunningServer, pair: tuple[str, str]
) -> None:
    """Nodes are the cluster's: the button is disabled and the API refuses the drain."""
    node = pair[0]
    with signed_in(server.base_url, server.mint("operator", unique("tenant"))) as client:
        page = client.get(f"/ui/nodes/{node}").text
        button = re.search(r'<button type="submit" class="danger"[^>]*>Drain</button>', page)
        assert button and 'disabled title="needs an operator of the cluster' in button.group(0)
        answer = client.post(f"/ui/nodes/{node}/drain", data={"csrf": csrf_of(client)})
    assert answer.status_code == 403
    assert "default tenant" in answer.text
    assert node_state(server, node) == "ready"


def test_drain_of_an_unknown_node_is_a_404_page(server: RunningServer) -> None:
    with signed_in(server.base_url, server.token("operator")) as client:
        answer = client.post("/ui/nodes/no-such-node/drain", data={"csrf": csrf_of(client)})
    assert answer.status_code == 404
    assert "<title>Error 404" in answer.text


def test_node_pages_have_no_inline_script_or_style(
    server: RunningServer, pair: tuple[str, str]
) -> None:
    with signed_in(server.base_url, server.token("viewer")) as client:
        for path in ("/ui/nodes", f"/ui/nodes/{pair[0]}"):
            answer = client.get(path)
            assert answer.status_code == 200, path
            html = answer.text
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path
            assert " style=" not in html and "<style" not in html, path
            assert not re.search(r"<[^>]+\son[a-z]+=", html), path


def _points(page: Page, testid: str) -> int:
    value = page.get_by_test_id(testid).get_attribute("data-points")
    return int(value or 0)


def test_in_a_browser_charts_run_live_and_a_drain_shows_live(
    server: RunningServer, pair: tuple[str, str], browser: Browser
) -> None:
    node = pair[0]
    context = new_console(browser)
    watcher = context.new_page()
    sign_in(watcher, server.base_url, server.token("operator"), "/ui/nodes")
    expect(watcher.locator("h1")).to_contain_text("Nodes")
    expect(watcher.locator("body")).to_have_attribute("data-live", "live")
    cpu_cell = watcher.locator(f'tr[data-node="{node}"] td[data-field="cpu"]')
    expect(cpu_cell).to_have_text(re.compile(r"^\d+\.\d%$"))
    rendered = cpu_cell.inner_text()
    expect(cpu_cell).not_to_have_text(rendered)  # the telemetry stream updates it each second
    expect(cpu_cell).to_have_text(re.compile(r"^\d+\.\d%$"))
    assert axe_violations(watcher) == []
    screenshot(watcher, "nodes")

    page = context.new_page()
    page.goto(f"{server.base_url}/ui/nodes/{node}")
    expect(page.locator("h1")).to_have_text(f"Node {node}")
    chart = page.get_by_test_id("chart-cpu")
    expect(chart).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
    first = _points(page, "chart-cpu")
    expect(chart).to_have_attribute("data-points", re.compile(rf"^(?!{first}$)\d+$"))
    assert _points(page, "chart-cpu") > first  # new points arrived over the stream
    expect(chart.locator(".latest")).to_contain_text(re.compile(r"busy \d+\.\d%"))
    assert chart.locator("canvas").count() == 1
    assert axe_violations(page) == []
    screenshot(page, "node")

    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Drain").click()
    expect(page.locator(".flash")).to_contain_text(f"Node {node} is draining")
    expect(page.get_by_test_id("node-state")).to_contain_text("draining")
    # the other open page learns it from the event stream, without a reload
    expect(watcher.locator(f'tr[data-node="{node}"] [data-testid="node-state"]')).to_contain_text(
        "draining"
    )
    page.get_by_role("button", name="Undrain").click()
    expect(page.get_by_test_id("node-state")).to_contain_text("ready")
    expect(watcher.locator(f'tr[data-node="{node}"] [data-testid="node-state"]')).to_contain_text(
        "ready"
    )

    page.goto(f"{server.base_url}/ui/nodes/{node}?range=7200")
    expect(page.get_by_test_id("chart-memory")).to_have_attribute(
        "data-points", re.compile(r"^[1-9]\d*$")
    )
    context.close()


def test_a_viewer_sees_the_drain_button_disabled_in_a_browser(
    server: RunningServer, pair: tuple[str, str], browser: Browser
) -> None:
    context = new_console(browser, width=390, height=844)
    page = context.new_page()
    sign_in(page, server.base_url, server.token("viewer"), f"/ui/nodes/{pair[1]}")
    expect(page.locator("h1")).to_have_text(f"Node {pair[1]}")
    expect(page.get_by_role("button", name="Drain")).to_be_disabled()
    expect(page.get_by_test_id("chart-cpu")).to_have_attribute(
        "data-points", re.compile(r"^[1-9]\d*$")
    )
    assert axe_violations(page) == []
    screenshot(page, "node-phone")
    context.close()

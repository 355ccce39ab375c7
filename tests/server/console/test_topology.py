"""The topology page: nodes as boxes with the visitor's instances inside, live."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from aether.server.console.topology import by_node
from tests.support.api import bearer, unique
from tests.support.browser import axe_violations, new_console, screenshot, sign_in
from tests.support.console import signed_in
from tests.support.live_node import LiveNode, deploy_app
from tests.support.server import RunningServer
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def placed(server: RunningServer) -> Iterator[tuple[str, str, str]]:
    """Two live nodes and an app with three instances ACTIVE on them."""
    with LiveNode(server, unique("tn")) as a, LiveNode(server, unique("tn")) as b:
        app = unique("topo")
        deploy_app(server, app, instances=3)

        def active() -> bool:
            answer = httpx.get(
                f"{server.base_url}/api/v1/instances",
                params={"app": app},
                headers=bearer(server.admin_token),
            )
            states = [i["state"] for i in answer.json()]
            return states == ["ACTIVE"] * 3

        wait_for(active, 20, "three ACTIVE instances")
        yield a.name, b.name, app


def box_of(html: str, node: str) -> str:
    """The node's box: from its opening tag to the next box (or the end of the list)."""
    boxes = html.split('<li class="topo-node ')[1:]
    found = [b for b in boxes if f'data-node="{node}"' in b.split(">", 1)[0]]
    assert len(found) == 1, f"no box for {node}"
    return found[0]


def test_by_node_groups_instances_by_app_and_number() -> None:
    rows = [
        {"node": "b", "app": "x", "n": 1},
        {"node": "a", "app": "y", "n": 0},
        {"node": "b", "app": "x", "n": 0},
    ]
    assert by_node(rows) == {
        "b": [{"node": "b", "app": "x", "n": 0}, {"node": "b", "app": "x", "n": 1}],
        "a": [{"node": "a", "app": "y", "n": 0}],
    }


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_every_role_sees_nodes_with_their_instances(
    server: RunningServer, placed: tuple[str, str, str], role: str
) -> None:
    a, b, app = placed
    with signed_in(server.base_url, server.token(role)) as client:
        page = client.get("/ui/topology")
    assert page.status_code == 200, page.text
    html = page.text
    assert html.count(f'href="/ui/apps/{app}"') == 3
    assert html.count("topo-inst inst-active") >= 3
    for node in (a, b):
        box = box_of(html, node)
        assert "node-ready" in box
        assert f'href="/ui/nodes/{node}"' in box


def test_in_a_browser_the_topology_follows_the_cluster_live(
    server: RunningServer, placed: tuple[str, str, str], browser: Browser
) -> None:
    context = new_console(browser)
    page = context.new_page()
    sign_in(page, server.base_url, server.token("viewer"), "/ui/topology")
    expect(page.locator("h1")).to_have_text("Topology")
    expect(page.locator("body")).to_have_attribute("data-live", "live")
    app = placed[2]
    expect(page.locator(f'.topo-inst[href="/ui/apps/{app}"]')).to_have_count(3)
    assert axe_violations(page) == []
    screenshot(page, "topology")
    with LiveNode(server, unique("tn")) as joined:  # a node joins: its box appears
        expect(page.locator(f'[data-node="{joined.name}"]')).to_have_attribute(
            "data-state", "ready"
        )
    page.locator(f'[data-node="{placed[0]}"] h3 a').click()
    expect(page.locator("h1")).to_have_text(f"Node {placed[0]}")
    context.close()


def test_another_tenant_sees_the_nodes_but_not_the_instances(
    server: RunningServer, placed: tuple[str, str, str]
) -> None:
    a, _, app = placed
    with signed_in(server.base_url, server.new_tenant()) as client:
        html = client.get("/ui/topology").text
    assert f'data-node="{a}"' in html
    assert app not in html


def test_a_draining_node_is_coloured_as_draining(
    server: RunningServer, placed: tuple[str, str, str]
) -> None:
    a = placed[0]
    admin = bearer(server.admin_token)
    httpx.post(f"{server.base_url}/api/v1/nodes/{a}/drain", headers=admin).raise_for_status()
    try:
        with signed_in(server.base_url, server.token("viewer")) as client:
            html = client.get("/ui/topology").text
        assert 'data-state="draining"' in box_of(html, a)
        assert "node-draining" in box_of(html, a)
    finally:
        httpx.post(f"{server.base_url}/api/v1/nodes/{a}/undrain", headers=admin)


def test_the_topology_has_no_inline_script_or_style(server: RunningServer) -> None:
    with signed_in(server.base_url, server.token("viewer")) as client:
        answer = client.get("/ui/topology")
    assert answer.status_code == 200
    html = answer.text
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert " style=" not in html and "<style" not in html
    assert not re.search(r"<[^>]+\son[a-z]+=", html)

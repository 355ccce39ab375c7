"""The risk and decisions page: nodes' risk, signals, decisions, and the fire drill.

A server of this module's own with a long lease, so fake nodes stay live without
heartbeats while a drill runs on them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from aether.model.api import RegisterIn
from aether.model.cluster import NodeCapabilities
from tests.support.api import bearer, unique
from tests.support.browser import axe_violations, new_console, screenshot, sign_in
from tests.support.console import csrf_of, signed_in
from tests.support.server import RunningServer, running_server
from tests.support.waiting import wait_for

DISABLED = 'disabled title="needs an operator of the cluster (the default tenant)"'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-console-risk"), lease_ttl=60.0) as srv:
        yield srv


@pytest.fixture
def two_nodes(server: RunningServer) -> tuple[str, str]:
    """Two live fake nodes: a drained one's instances would have somewhere to go.

    Registered over HTTP with their own credentials, as ``FakeNodes`` does: once the
    session's browser runs, Playwright's loop is running and async fixtures cannot."""
    return register(server, unique("drilled")), register(server, unique("spare"))


def register(server: RunningServer, name: str) -> str:
    """A fake node registered over HTTP with its own credential (``FakeNodes.register``)."""
    capabilities = NodeCapabilities(cpus=4.0, memory_mb=4096, drivers=["process"])
    body = RegisterIn(id=name, capabilities=capabilities, router_url="http://127.0.0.1:1")
    api(
        server,
        "POST",
        "/api/v1/nodes/register",
        server.node_token(name),
        json=body.model_dump(mode="json"),
    )
    return name


def api(server: RunningServer, method: str, path: str, token: str = "", **kw: Any) -> Any:
    answer = httpx.request(
        method, f"{server.base_url}{path}", headers=bearer(token or server.admin_token), **kw
    )
    assert answer.status_code < 300, answer.text
    return answer.json()


def drilled(server: RunningServer) -> list[str]:
    nodes: list[str] = api(server, "GET", "/api/v1/drill")["nodes"]
    return nodes


def risk_of(server: RunningServer, node: str) -> str | None:
    found = [a["status"] for a in api(server, "GET", "/api/v1/risk") if a["node"] == node]
    return found[0] if found else None


def test_a_viewer_sees_risk_and_cannot_start_a_drill(
    server: RunningServer, two_nodes: tuple[str, str]
) -> None:
    node, _ = two_nodes
    with signed_in(server.base_url, server.token("viewer")) as client:
        page = client.get("/ui/risk")
        assert page.status_code == 200, page.text
        assert f'data-node="{node}"' in page.text
        button = re.search(rf'aria-label="Start the fire drill on {node}" ([^>]*)>', page.text)
        assert button and DISABLED in button.group(1)
        forced = client.post(
            "/ui/risk/drill/start", data={"csrf": csrf_of(client, "/ui/risk"), "node": node}
        )
        assert forced.status_code == 403 and "<title>Error 403" in forced.text
    assert node not in drilled(server)


def test_another_tenants_operator_cannot_start_a_drill(
    server: RunningServer, two_nodes: tuple[str, str]
) -> None:
    node, _ = two_nodes
    with signed_in(server.base_url, server.mint("operator", unique("tenant"))) as client:
        page = client.get("/ui/risk")
        button = re.search(rf'aria-label="Start the fire drill on {node}" ([^>]*)>', page.text)
        assert button and DISABLED in button.group(1)
        forced = client.post(
            "/ui/risk/drill/start", data={"csrf": csrf_of(client, "/ui/risk"), "node": node}
        )
        assert forced.status_code == 403 and "default tenant" in forced.text
    assert node not in drilled(server)


def test_a_drill_without_csrf_changes_nothing(
    server: RunningServer, two_nodes: tuple[str, str]
) -> None:
    node, _ = two_nodes
    with signed_in(server.base_url, server.token("operator")) as client:
        for data in ({"node": node}, {"node": node, "csrf": "forged"}):
            refused = client.post("/ui/risk/drill/start", data=data)
            assert refused.status_code == 403 and "CSRF" in refused.text
    assert node not in drilled(server)
    assert api(server, "GET", "/api/v1/signals", params={"node": node}) == []


def test_an_operator_starts_and_stops_the_drill(
    server: RunningServer, two_nodes: tuple[str, str]
) -> None:
    node, _ = two_nodes
    with signed_in(server.base_url, server.token("operator")) as client:
        csrf = csrf_of(client, "/ui/risk")
        started = client.post("/ui/risk/drill/start", data={"csrf": csrf, "node": node})
        assert started.status_code == 303, started.text
        assert started.headers["location"].startswith("/ui/risk?done=Fire%20drill%20started")
        assert node in drilled(server)
        page = client.get(started.headers["location"])
        assert f"Fire drill started on {node}" in page.text
        assert re.search(rf'aria-label="Stop the fire drill on {node}"', page.text)
        wait_for(lambda: risk_of(server, node) == "CRITICAL", 10, f"{node} to be CRITICAL")
        stopped = client.post("/ui/risk/drill/stop", data={"csrf": csrf, "node": node})
        assert stopped.status_code == 303
        assert node not in drilled(server)
        assert f"Fire drill stopped on {node}" in client.get(stopped.headers["location"]).text
        history = client.get(f"/ui/risk/{node}")
        assert history.status_code == 200 and "CRITICAL" in history.text
        assert "drill" in history.text  # its signals, with their source
        bad = client.post("/ui/risk/drill/start", data={"csrf": csrf, "node": "ghost-node"})
        assert bad.status_code == 404 and "not live" in bad.text
        wrong = client.post("/ui/risk/drill/explode", data={"csrf": csrf, "node": node})
        assert wrong.status_code in (400, 404)


def test_decisions_are_filtered_in_the_query_string(
    server: RunningServer, two_nodes: tuple[str, str]
) -> None:
    node, _ = two_nodes
    api(server, "POST", "/api/v1/drill/start", server.token("operator"), json={"node": node})

    def drained() -> list[Any]:
        found: list[Any] = api(
            server, "GET", "/api/v1/decisions", params={"kind": "drain", "target": node}
        )
        return found

    [decision] = wait_for(drained, 10, f"the controller to drain {node}")
    api(server, "POST", "/api/v1/drill/stop", server.token("operator"), json={"node": node})
    with signed_in(server.base_url, server.token("viewer")) as client:
        page = client.get("/ui/risk", params={"kind": "drain", "target": node, "layer": 1})
        assert page.status_code == 200
        assert f'data-decision="{decision["id"]}"' in page.text
        assert f"node {node} is CRITICAL" in page.text  # the reason
        assert "risk_inputs" in page.text  # the inputs it looked at
        assert '<option value="drain" selected>' in page.text
        other = client.get("/ui/risk", params={"kind": "scale", "target": node})
        assert 'data-decision="' not in other.text and "No decision matches" in other.text
        bad = client.get("/ui/risk", params={"layer": 9})
        assert bad.status_code == 400 and "<title>Error 400" in bad.text
        unknown = client.get("/ui/risk/no-such-node")
        assert unknown.status_code == 404 and "no risk assessment" in unknown.text


def test_the_drill_in_a_browser_shows_risk_and_decision_live(
    server: RunningServer, browser: Browser, two_nodes: tuple[str, str]
) -> None:
    node, _ = two_nodes
    context = new_console(browser)
    watcher = context.new_page()  # a viewer's page, open before anything happens
    sign_in(watcher, server.base_url, server.token("viewer"), "/ui/risk")
    expect(watcher.locator("h1")).to_have_text("Risk & decisions")
    expect(watcher.locator("body")).to_have_attribute("data-live", "live")
    row = watcher.locator(f'#risk-nodes tr[data-node="{node}"]')
    expect(row.get_by_role("button", name=f"Start the fire drill on {node}")).to_be_disabled()
    assert axe_violations(watcher) == []

    operator_context = new_console(browser)
    page = operator_context.new_page()
    sign_in(page, server.base_url, server.token("operator"), "/ui/risk")
    page.get_by_role("button", name=f"Start the fire drill on {node}").click()
    expect(page.locator(".flash")).to_contain_text(f"Fire drill started on {node}")
    mine = page.locator(f'#risk-nodes tr[data-node="{node}"]')
    expect(mine.locator("[data-testid=drill]")).to_have_text("drill running")

    # the viewer's page, never reloaded, shows the risk and the controller's decision
    expect(row.locator("[data-testid=risk-status]")).to_contain_text("CRITICAL")
    expect(row.locator("[data-testid=risk-cause]")).to_contain_text("Cloud Provider Signal")
    decision = watcher.locator("#risk-decisions tr[data-decision]", has_text=node)
    expect(decision.first).to_contain_text("drain")
    expect(decision.first).to_contain_text("applied")
    assert axe_violations(watcher) == []
    screenshot(watcher, "risk")

    mine.get_by_role("button", name=f"Stop the fire drill on {node}").click()
    expect(page.locator(".flash")).to_contain_text(f"Fire drill stopped on {node}")
    expect(page.locator(f'#risk-nodes tr[data-node="{node}"] [data-testid=drill]')).to_have_text(
        "no drill"
    )
    expect(row.locator("[data-testid=risk-status]")).to_contain_text("LOW")
    operator_context.close()

    phone = context.new_page()
    phone.set_viewport_size({"width": 390, "height": 844})
    phone.goto(f"{server.base_url}/ui/risk")
    expect(phone.locator("h1")).to_have_text("Risk & decisions")
    assert axe_violations(phone) == []
    context.close()


def test_the_page_has_no_inline_script_or_style(
    server: RunningServer, two_nodes: tuple[str, str]
) -> None:
    node, _ = two_nodes
    api(server, "POST", "/api/v1/signals", json={"node": node, "kind": "capacity", "value": 0.9})
    wait_for(lambda: risk_of(server, node), 10, f"{node} to be assessed")
    with signed_in(server.base_url, server.token("viewer")) as client:
        for path in ("/ui/risk", f"/ui/risk/{node}"):
            answer = client.get(path)
            assert answer.status_code == 200, path
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", answer.text), path
            assert " style=" not in answer.text and "<style" not in answer.text, path
            assert not re.search(r"<[^>]+\son[a-z]+=", answer.text), path

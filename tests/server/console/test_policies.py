"""The policy pages: the list and the editor, whose Simulate shows what the edited policy
would have decided on the policy's past calls without saving it, and whose Save makes
it the next version — each role, another tenant's policy, missing CSRF."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
import pytest
import yaml
from playwright.sync_api import Browser, expect

from tests.support.api import bearer, unique
from tests.support.browser import axe_violations, new_console, screenshot, sign_in
from tests.support.console import csrf_of, signed_in
from tests.support.server import RunningServer

OPEN = {"description": "commands", "tools": ["run-command", "search"], "max_steps": 5}
TIGHT = {**OPEN, "constraints": [{"tool": "run-command", "arg": "command", "allow": ["ls"]}]}


def api(server: RunningServer, method: str, path: str, token: str, **kw: Any) -> Any:
    with httpx.Client(base_url=server.base_url, headers=bearer(token), timeout=15.0) as http:
        answer = http.request(method, path, **kw)
    assert answer.status_code < 300, answer.text
    return answer.json() if answer.content else None


def policy_with_calls(server: RunningServer) -> tuple[str, str]:
    """A tenant with policy OPEN that allowed ``ls -la`` and then ``rm -rf /``: (tenant,
    the policy's id)."""
    tenant, policy = unique("pol-ui"), unique("ops")
    admin = server.mint("admin", tenant)
    api(server, "POST", "/api/v1/policies", admin, json={"id": policy, **OPEN})
    for command in ("ls -la", "rm -rf /"):
        body = {"tool_id": "run-command", "arguments": {"command": command}}
        answer = api(server, "POST", f"/api/v1/policies/{policy}/evaluate", admin, json=body)
        assert answer["decision"] == "allow"
    return tenant, policy


def constraints(found: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if v is not None} for c in found["constraints"]]


def stored(server: RunningServer, tenant: str, policy: str) -> dict[str, Any]:
    found: dict[str, Any] = api(
        server, "GET", f"/api/v1/policies/{policy}", server.mint("viewer", tenant)
    )
    return found


def form_error(page: str) -> str:
    found = re.search(r'data-testid="form-error">(.*?)</div>', page, re.S)
    assert found, page
    return html.unescape(found.group(1))


def textarea(page: str) -> str:
    found = re.search(r'<textarea id="policy-text"[^>]*>(.*?)</textarea>', page, re.S)
    assert found, page
    return html.unescape(found.group(1))


def count(page: str, name: str) -> int:
    found = re.search(rf'data-count="{name}">(\d+)<', page)
    assert found, page
    return int(found.group(1))


def test_the_list_shows_default_safe_and_the_tenants_own(server: RunningServer) -> None:
    tenant, policy = policy_with_calls(server)
    _, foreign = policy_with_calls(server)
    with signed_in(server.base_url, server.mint("viewer", tenant)) as client:
        page = client.get("/ui/policies")
    assert page.status_code == 200, page.text
    assert re.findall(r'<tr data-policy="([^"]+)"', page.text) == ["default-safe", policy]
    assert f'href="/ui/policies/{policy}"' in page.text and foreign not in page.text


def test_a_viewer_sees_the_policy_read_only(server: RunningServer) -> None:
    tenant, policy = policy_with_calls(server)
    with signed_in(server.base_url, server.mint("viewer", tenant)) as client:
        page = client.get(f"/ui/policies/{policy}")
        csrf = csrf_of(client)
        refused = client.post(
            f"/ui/policies/{policy}/simulate", data={"csrf": csrf, "policy": yaml.dump(TIGHT)}
        )
        saved = client.post(f"/ui/policies/{policy}", data={"csrf": csrf, "policy": "tools: []"})
    assert page.status_code == 200, page.text
    assert 'data-testid="read-only"' in page.text and " readonly>" in page.text
    assert 'data-testid="simulate"' not in page.text and 'data-testid="save"' not in page.text
    assert yaml.safe_load(textarea(page.text)) == {
        **OPEN,
        "constraints": [],
        "approval_required": [],
        "max_tool_calls": None,
        "token_budgets": {"per_run": None, "per_agent_per_day": None, "per_tenant_per_day": None},
        "egress_hosts": [],
        "redact": [],
    }
    assert "Aether::Action" in page.text  # its Cedar
    assert refused.status_code == 403 and "operator" in form_error(refused.text)
    assert saved.status_code == 403 and "admin" in form_error(saved.text)
    assert stored(server, tenant, policy)["version"] == 1


def test_simulate_shows_the_counts_and_changed_calls_and_saves_nothing(
    server: RunningServer,
) -> None:
    tenant, policy = policy_with_calls(server)
    edited = yaml.safe_dump(TIGHT)
    with signed_in(server.base_url, server.mint("operator", tenant)) as client:
        editor = client.get(f"/ui/policies/{policy}")
        assert 'data-testid="simulate"' in editor.text
        assert 'data-testid="save" disabled title="needs the admin role"' in editor.text
        page = client.post(
            f"/ui/policies/{policy}/simulate", data={"csrf": csrf_of(client), "policy": edited}
        )
    assert page.status_code == 200, page.text
    assert (count(page.text, "replayed"), count(page.text, "changed")) == (2, 1)
    assert (count(page.text, "would_allow"), count(page.text, "would_deny")) == (1, 1)
    assert count(page.text, "would_need_approval") == 0
    rows = re.findall(r'<tr data-enforcement="\d+">(.*?)</tr>', page.text, re.S)
    assert len(rows) == 1  # only the changed call
    assert "state-allow" in rows[0] and "state-deny" in rows[0]
    assert "must run one of: ls" in html.unescape(rows[0])
    assert textarea(page.text) == edited  # the edit is kept, not saved
    assert "still version 1" in page.text
    assert stored(server, tenant, policy)["constraints"] == []


def test_an_admin_saves_the_edit_as_the_next_version(server: RunningServer) -> None:
    tenant, policy = policy_with_calls(server)
    admin = server.mint("admin", tenant)
    edited = yaml.safe_dump({"id": policy, **TIGHT, "max_steps": None, "description": "tight"})
    with signed_in(server.base_url, admin) as client:
        saved = client.post(
            f"/ui/policies/{policy}", data={"csrf": csrf_of(client), "policy": edited}
        )
        assert saved.status_code == 303, saved.text
        shown = client.get(saved.headers["location"])
    assert "is now version 2" in html.unescape(shown.text)
    assert yaml.safe_load(textarea(shown.text))["constraints"] == TIGHT["constraints"]
    now = stored(server, tenant, policy)
    assert now["version"] == 2 and now["description"] == "tight"
    assert constraints(now) == TIGHT["constraints"]
    assert now["max_steps"] is None  # the text is the whole policy

    with signed_in(server.base_url, admin) as client:
        fields = {"csrf": csrf_of(client), "policy": "tools: []\negress_hosts: [", "x": "1"}
        broken = client.post(f"/ui/policies/{policy}", data=fields)
    assert broken.status_code == 400 and "not YAML or JSON" in form_error(broken.text)
    assert textarea(broken.text) == "tools: []\negress_hosts: ["
    assert stored(server, tenant, policy)["version"] == 2


@pytest.mark.parametrize(
    ("text", "status", "says"),
    [
        ("tools: [nope-tool]", 400, "names tool 'nope-tool'"),
        ("max_steps: -1", 400, "max_steps"),
        ("surprise: 1", 400, "surprise"),
        ("- just a list", 400, "must be a mapping"),
        ("id: another\ntools: []", 400, "not"),
    ],
)
def test_refused_edits_are_shown_inline_with_the_text_kept(
    server: RunningServer, text: str, status: int, says: str
) -> None:
    tenant, policy = policy_with_calls(server)
    with signed_in(server.base_url, server.mint("admin", tenant)) as client:
        csrf = csrf_of(client)
        for action in (f"/ui/policies/{policy}", f"/ui/policies/{policy}/simulate"):
            page = client.post(action, data={"csrf": csrf, "policy": text})
            assert page.status_code == status, (action, page.text)
            assert says in form_error(page.text), action
            assert textarea(page.text) == text
    assert stored(server, tenant, policy)["version"] == 1


def test_default_safe_is_simulated_but_never_saved(server: RunningServer) -> None:
    tenant, _ = policy_with_calls(server)
    with signed_in(server.base_url, server.mint("admin", tenant)) as client:
        editor = client.get("/ui/policies/default-safe")
        assert 'title="built in: copy it under another id to change it"' in editor.text
        csrf = csrf_of(client)
        simulated = client.post(
            "/ui/policies/default-safe/simulate", data={"csrf": csrf, "policy": "tools: []"}
        )
        saved = client.post("/ui/policies/default-safe", data={"csrf": csrf, "policy": "tools: []"})
    assert simulated.status_code == 200 and count(simulated.text, "replayed") == 0
    assert "nothing to replay" in simulated.text
    assert saved.status_code == 409 and "built in" in form_error(saved.text)


def test_another_tenants_policy_is_not_found_and_unchanged(server: RunningServer) -> None:
    tenant, policy = policy_with_calls(server)
    with signed_in(server.base_url, server.new_tenant()) as client:
        csrf = csrf_of(client)
        shown = client.get(f"/ui/policies/{policy}")
        simulated = client.post(
            f"/ui/policies/{policy}/simulate", data={"csrf": csrf, "policy": "tools: []"}
        )
        saved = client.post(f"/ui/policies/{policy}", data={"csrf": csrf, "policy": "tools: []"})
    for page in (shown, simulated, saved):
        assert page.status_code == 404, page.text
        assert f"policy {policy!r} not found" in html.unescape(page.text)
        assert "run-command" not in page.text
    assert stored(server, tenant, policy)["version"] == 1


@pytest.mark.parametrize("action", ["", "/simulate"])
def test_posting_without_the_csrf_token_is_refused(server: RunningServer, action: str) -> None:
    tenant, policy = policy_with_calls(server)
    with signed_in(server.base_url, server.mint("admin", tenant)) as client:
        refused = client.post(f"/ui/policies/{policy}{action}", data={"policy": "tools: []"})
    assert refused.status_code == 403, refused.text
    assert "Simulation" not in refused.text
    assert stored(server, tenant, policy)["version"] == 1


def test_in_a_browser_an_admin_simulates_a_change_then_saves_it(
    server: RunningServer, browser: Browser
) -> None:
    tenant, policy = policy_with_calls(server)
    context = new_console(browser)
    page = context.new_page()
    sign_in(page, server.base_url, server.mint("admin", tenant))
    page.get_by_role("link", name="Policies", exact=True).click()
    expect(page.locator("h1")).to_have_text("Policies")
    assert axe_violations(page) == []
    page.get_by_role("link", name=policy).click()
    expect(page.locator("h1")).to_contain_text(f"Policy {policy}")
    page.fill("#policy-text", yaml.safe_dump(TIGHT))
    page.get_by_test_id("simulate").click()
    expect(page.get_by_test_id("simulation")).to_contain_text("still version 1")
    expect(page.locator('[data-count="changed"]')).to_have_text("1")
    expect(page.locator('[data-count="would_deny"]')).to_have_text("1")
    expect(page.get_by_test_id("sim-calls")).to_contain_text("must run one of: ls")
    assert yaml.safe_load(page.input_value("#policy-text")) == TIGHT  # kept, not saved
    assert axe_violations(page) == []
    screenshot(page, "policy-simulate")
    assert stored(server, tenant, policy)["version"] == 1
    page.get_by_test_id("save").click()
    expect(page.locator(".flash.ok")).to_contain_text("is now version 2")
    assert constraints(stored(server, tenant, policy)) == TIGHT["constraints"]
    context.close()

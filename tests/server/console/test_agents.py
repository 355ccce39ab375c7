"""The agents pages: My Agents, one agent (config, versions, export) and the wizard that
creates an agent from a recipe, asking only for what the recipe leaves open."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.support.api import bearer, unique
from tests.support.browser import axe_violations, new_console, screenshot, sign_in
from tests.support.console import csrf_of, signed_in
from tests.support.server import RunningServer


def api(server: RunningServer, method: str, path: str, token: str, **kw: Any) -> Any:
    with httpx.Client(base_url=server.base_url, headers=bearer(token), timeout=15.0) as http:
        answer = http.request(method, path, **kw)
    assert answer.status_code < 300, answer.text
    return answer.json() if answer.content else None


def new_model(server: RunningServer, admin: str) -> str:
    """A model of ``admin``'s tenant (never called): its ``model://`` reference."""
    name = unique("model")
    body = {"name": name, "base_url": "http://127.0.0.1:9/v1", "model_id": "scripted"}
    made: dict[str, Any] = api(server, "POST", "/api/v1/models", admin, json=body)
    return str(made["ref"])


def new_agent(server: RunningServer, admin: str, **fields: Any) -> dict[str, Any]:
    body = {
        "name": unique("agent"),
        "model": new_model(server, admin),
        "policy_ids": ["default-safe"],
        "tool_ids": ["search"],
        "system_prompt": "Answer from the docs.",
        "config": {"max_tokens": 512},
        **fields,
    }
    made: dict[str, Any] = api(server, "POST", "/api/v1/agents", admin, json=body)
    return made


def agents_of(server: RunningServer, token: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api(server, "GET", "/api/v1/agents", token)["agents"]
    return found


def form_error(page: str) -> str:
    found = re.search(r'data-testid="form-error">(.*?)</div>', page, re.S)
    assert found, page
    return html.unescape(found.group(1))


# -- My Agents and one agent ------------------------------------------------------------------


def test_my_agents_lists_the_tenants_agents_and_links_each(server: RunningServer) -> None:
    tenant = unique("agents-ui")
    admin = server.mint("admin", tenant)
    agent = new_agent(server, admin)
    foreign = new_agent(server, server.new_tenant())
    with signed_in(server.base_url, server.mint("viewer", tenant)) as client:
        page = client.get("/ui/agents")
    assert page.status_code == 200, page.text
    nav = re.search(r'<nav aria-label="Main">(.*?)</nav>', page.text, re.S)
    assert nav and '<a href="/ui/agents" aria-current="page">Agents</a>' in nav.group(1)
    assert '<a href="/ui/policies">Policies</a>' in nav.group(1)
    row = re.search(rf'<tr data-agent="{agent["id"]}">(.*?)</tr>', page.text, re.S)
    assert row, page.text
    cells = row.group(1)
    assert f'href="/ui/agents/{agent["id"]}"' in cells and agent["name"] in cells
    assert agent["model"] in cells and "v1" in cells and "search" in cells
    assert 'href="/ui/policies/default-safe"' in cells and "not deployed" in cells
    assert "created" in cells
    assert foreign["id"] not in page.text and foreign["name"] not in page.text


def test_an_agent_page_shows_its_config_versions_and_exports_it(server: RunningServer) -> None:
    tenant = unique("agent-ui")
    admin = server.mint("admin", tenant)
    agent = new_agent(server, admin)
    api(server, "PATCH", f"/api/v1/agents/{agent['id']}", admin, json={"tool_ids": ["apps-list"]})
    with signed_in(server.base_url, server.mint("viewer", tenant)) as client:
        page = client.get(f"/ui/agents/{agent['id']}")
        exported = client.get(f"/ui/agents/{agent['id']}/export")
    assert page.status_code == 200, page.text
    text = html.unescape(page.text)
    assert f"Agent {agent['name']}" in text and "version 2" in text
    assert "apps-list" in text and "Answer from the docs." in text
    assert '"max_tokens": 512' in text
    versions = re.findall(r'<tr data-version="(\d+)"', page.text)
    assert versions == ["2", "1"]
    assert f'href="/ui/agents/{agent["id"]}/export"' in page.text

    assert exported.status_code == 200, exported.text
    assert exported.headers["content-disposition"] == (
        f'attachment; filename="{agent["name"]}.agent.json"'
    )
    agent_file = exported.json()
    assert agent_file["name"] == agent["name"] and agent_file["tool_ids"] == ["apps-list"]
    assert "api_key" not in exported.text


def test_another_tenants_agent_is_not_found(server: RunningServer) -> None:
    agent = new_agent(server, server.new_tenant())
    with signed_in(server.base_url, server.new_tenant()) as client:
        for path in (f"/ui/agents/{agent['id']}", f"/ui/agents/{agent['id']}/export"):
            page = client.get(path)
            assert page.status_code == 404, (path, page.text)
            assert f"agent {agent['id']!r} not found" in html.unescape(page.text)
            assert agent["name"] not in page.text


# -- the wizard -------------------------------------------------------------------------------


def test_the_wizard_offers_the_catalog_then_asks_only_for_what_the_recipe_leaves_open(
    server: RunningServer,
) -> None:
    tenant = unique("wizard")
    admin = server.mint("admin", tenant)
    model = new_model(server, admin)
    recipe = {
        "id": unique("own-recipe"),
        "name": "Own recipe",
        "model": model,
        "tool_ids": [],
        "open": ["tool_ids", "config"],
    }
    api(server, "POST", "/api/v1/agent-catalog", admin, json=recipe)
    with signed_in(server.base_url, server.mint("operator", tenant)) as client:
        catalog = client.get("/ui/agents/new")
        runner = client.get("/ui/agents/new", params={"recipe": "code-runner"})
        own = client.get("/ui/agents/new", params={"recipe": recipe["id"]})
        unknown = client.get("/ui/agents/new", params={"recipe": "no-such-recipe"})
    assert catalog.status_code == 200, catalog.text
    offered = re.findall(r'<li class="card" data-recipe="([^"]+)"', catalog.text)
    assert offered == ["code-runner", "ops-assistant", "docs-qa", recipe["id"]]

    assert runner.status_code == 200, runner.text
    assert 'name="name"' in runner.text and 'name="model"' in runner.text
    assert f'<option value="{model}">' in runner.text
    for fixed in ('name="tool_ids"', 'name="policy_ids"', 'name="system_prompt"', 'name="config"'):
        assert fixed not in runner.text, fixed
    assert 'name="recipe" value="code-runner"' in runner.text

    assert 'name="model"' not in own.text and 'name="policy_ids"' not in own.text
    assert 'name="tool_ids" value="search"' in own.text and 'name="config"' in own.text
    assert unknown.status_code == 404


def test_the_wizard_creates_the_agent_and_shows_refusals_inline_keeping_the_form(
    server: RunningServer,
) -> None:
    tenant = unique("wizard")
    admin = server.mint("admin", tenant)
    model = new_model(server, admin)
    name = unique("runner")
    with signed_in(server.base_url, server.mint("operator", tenant)) as client:
        csrf = csrf_of(client, "/ui/agents/new")
        fields = {"csrf": csrf, "recipe": "code-runner", "name": name}
        no_model = client.post("/ui/agents/new", data=fields)
        assert no_model.status_code == 400, no_model.text
        assert "model" in form_error(no_model.text)
        assert f'value="{name}"' in no_model.text  # what was typed is still there
        assert agents_of(server, admin) == []

        made = client.post("/ui/agents/new", data={**fields, "model": model})
        assert made.status_code == 303, made.text
        created = agents_of(server, admin)
        assert [a["name"] for a in created] == [name]
        assert made.headers["location"].startswith(f"/ui/agents/{created[0]['id']}?done=")
        assert created[0]["tool_ids"] == ["run-code", "run-command"]  # the recipe's
        assert created[0]["model"] == model

        again = client.post("/ui/agents/new", data={**fields, "model": model})
        assert again.status_code == 409 and "already" in form_error(again.text)
        assert f'<option value="{model}" selected>' in again.text

        gone = client.post("/ui/agents/new", data={**fields, "model": "model://gone"})
        assert gone.status_code == 404 and form_error(gone.text) == "model not found"


def test_a_bad_config_is_shown_inline_and_nothing_is_created(server: RunningServer) -> None:
    tenant = unique("wizard")
    admin = server.mint("admin", tenant)
    recipe = {"id": unique("cfg"), "name": "Cfg", "model": new_model(server, admin)}
    api(server, "POST", "/api/v1/agent-catalog", admin, json={**recipe, "open": ["config"]})
    with signed_in(server.base_url, admin) as client:
        fields = {"csrf": csrf_of(client), "recipe": recipe["id"], "name": unique("a")}
        bad = client.post("/ui/agents/new", data={**fields, "config": "[1, 2]"})
        assert bad.status_code == 400 and "must be a mapping" in form_error(bad.text)
        assert "[1, 2]</textarea>" in bad.text
        ok = client.post("/ui/agents/new", data={**fields, "config": "temperature: 0.2"})
        assert ok.status_code == 303, ok.text
    assert agents_of(server, admin)[0]["config"] == {"temperature": 0.2}


@pytest.mark.parametrize("csrf", [None, "forged"])
def test_creating_without_the_csrf_token_is_refused(
    server: RunningServer, csrf: str | None
) -> None:
    tenant = unique("wizard")
    admin = server.mint("admin", tenant)
    fields = {"recipe": "code-runner", "name": unique("a"), "model": new_model(server, admin)}
    with signed_in(server.base_url, admin) as client:
        refused = client.post("/ui/agents/new", data=fields | ({"csrf": csrf} if csrf else {}))
    assert refused.status_code == 403, refused.text
    assert agents_of(server, admin) == []


def test_a_viewer_sees_the_wizard_but_cannot_create(server: RunningServer) -> None:
    tenant = unique("wizard")
    admin = server.mint("admin", tenant)
    model = new_model(server, admin)
    with signed_in(server.base_url, server.mint("viewer", tenant)) as client:
        step1 = client.get("/ui/agents/new")
        assert 'data-testid="needs-operator"' in step1.text
        step2 = client.get("/ui/agents/new", params={"recipe": "docs-qa"})
        assert 'title="needs the operator role"' in step2.text
        fields = {"csrf": csrf_of(client), "recipe": "docs-qa", "name": "x", "model": model}
        refused = client.post("/ui/agents/new", data=fields)
    assert refused.status_code == 403 and "operator" in form_error(refused.text)
    assert agents_of(server, admin) == []


def test_another_tenants_recipe_cannot_be_used(server: RunningServer) -> None:
    owner = server.new_tenant()
    recipe = {"id": unique("theirs"), "name": "Theirs", "model": new_model(server, owner)}
    api(server, "POST", "/api/v1/agent-catalog", owner, json=recipe)
    other = server.new_tenant()
    with signed_in(server.base_url, other) as client:
        shown = client.get("/ui/agents/new", params={"recipe": recipe["id"]})
        fields = {"csrf": csrf_of(client), "recipe": recipe["id"], "name": unique("a")}
        made = client.post("/ui/agents/new", data=fields)
    assert shown.status_code == 404 and made.status_code == 404
    assert agents_of(server, other) == []


# -- in a browser -----------------------------------------------------------------------------


def test_in_a_browser_an_operator_creates_an_agent_from_a_recipe(
    server: RunningServer, browser: Browser
) -> None:
    tenant = unique("wizard-ui")
    admin = server.mint("admin", tenant)
    model = new_model(server, admin)
    name = unique("helper")
    context = new_console(browser)
    page = context.new_page()
    sign_in(page, server.base_url, server.mint("operator", tenant))
    page.get_by_role("link", name="Agents", exact=True).click()
    expect(page.locator("h1")).to_have_text("My Agents")
    assert axe_violations(page) == []
    page.get_by_test_id("new-agent").click()
    expect(page.locator("h1")).to_contain_text("pick a recipe")
    assert axe_violations(page) == []
    screenshot(page, "agents-recipes")
    page.get_by_role("link", name="Use the recipe Ops assistant").click()
    page.fill("#a-name", name)
    page.get_by_role("button", name="Create agent").click()  # no model chosen yet
    expect(page.get_by_test_id("form-error")).to_contain_text("model")
    expect(page.locator("#a-name")).to_have_value(name)
    assert axe_violations(page) == []
    page.select_option("#a-model", model)
    page.get_by_role("button", name="Create agent").click()
    expect(page.locator("h1")).to_contain_text(f"Agent {name}")
    expect(page.locator(".flash.ok")).to_contain_text("created from Ops assistant")
    expect(page.get_by_test_id("agent-config")).to_contain_text("cluster-status, apps-list")
    assert axe_violations(page) == []
    screenshot(page, "agent")
    with page.expect_download() as download:
        page.get_by_test_id("export").click()
    saved = json.loads(download.value.path().read_text())
    assert saved["name"] == name and saved["model"] == model
    page.get_by_role("link", name="My Agents").click()
    expect(page.locator(f'tr[data-agent="{agents_of(server, admin)[0]["id"]}"]')).to_contain_text(
        name
    )
    screenshot(page, "agents")
    context.close()


def test_the_agent_and_policy_pages_fit_a_phone_and_pass_the_accessibility_scan(
    server: RunningServer, browser: Browser
) -> None:
    tenant = unique("phone")
    admin = server.mint("admin", tenant)
    agent = new_agent(server, admin)
    context = new_console(browser, width=390, height=844)
    page = context.new_page()
    sign_in(page, server.base_url, admin, "/ui/agents")
    no_overflow = "document.documentElement.scrollWidth <= window.innerWidth"
    for path, title in (
        ("/ui/agents", "My Agents"),
        (f"/ui/agents/{agent['id']}", f"Agent {agent['name']}"),
        ("/ui/agents/new", "pick a recipe"),
        ("/ui/agents/new?recipe=docs-qa", "Docs Q&A"),
        ("/ui/policies", "Policies"),
        ("/ui/policies/default-safe", "Policy default-safe"),
    ):
        page.goto(f"{server.base_url}{path}")
        expect(page.locator("main h1")).to_contain_text(title)
        assert axe_violations(page) == [], path
        assert page.evaluate(no_overflow), path
    context.close()

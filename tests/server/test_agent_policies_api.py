"""Agent tools and policies over HTTP: built-ins in every tenant, a tenant's own tools and
policies, the dry decision (kept as a policy enforcement, named by its audit event), the
YAML sync behind its setting, and another tenant's objects answering 404."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aether.server.services.gc import collect_garbage
from tests.support.api import bearer, unique
from tests.support.server import RunningServer, running_server

BUILTIN_IDS = {
    "search",
    "memory-write",
    "run-code",
    "run-command",
    "cluster-status",
    "apps-list",
    "scale",
    "rollback",
    "drain",
}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with the tool sync on (``agent_tools_sync``)."""
    with running_server(tmp_path_factory.mktemp("agent-policies"), agent_tools_sync=True) as s:
        yield s


@pytest.fixture
async def http(srv: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=10.0) as client:
        yield client


def weather(tool_id: str) -> dict[str, Any]:
    return {
        "id": tool_id,
        "kind": "http",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 64}, "token": {}},
            "required": ["city"],
        },
        "config": {
            "method": "GET",
            "url": "https://weather.example.com/now/{city}",
            "headers": {"Authorization": "weather-token"},
        },
    }


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def test_every_tenant_has_the_built_in_tools_and_default_safe(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    viewer = bearer(srv.mint("viewer", unique("fresh")))
    tools = _ok(await http.get("/api/v1/tools", headers=viewer))
    assert {t["id"] for t in tools} == BUILTIN_IDS
    search = next(t for t in tools if t["id"] == "search")
    assert search["kind"] == "memory" and search["builtin"] and search["read_only"]
    assert search["config"] == {"operation": "search"}
    # the built-in tool named like the search route: without q, the path is the tool
    assert _ok(await http.get("/api/v1/tools/search", headers=viewer)) == search
    scale = _ok(await http.get("/api/v1/tools/scale", headers=viewer))
    assert scale["kind"] == "aether" and not scale["read_only"]
    policies = _ok(await http.get("/api/v1/policies", headers=viewer))
    assert [p["id"] for p in policies] == ["default-safe"]
    safe = _ok(await http.get("/api/v1/policies/default-safe", headers=viewer))
    assert safe["builtin"] and safe["version"] == 1
    assert safe["approval_required"] == ["run-code", "run-command"]
    assert safe["max_steps"] == 20 and safe["token_budgets"]["per_run"] == 50_000
    assert 'Aether::Action::"call"' in safe["cedar"]


async def test_a_tenant_adds_searches_and_deletes_its_tools(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant = unique("tools")
    admin, viewer = bearer(srv.mint("admin", tenant)), bearer(srv.mint("viewer", tenant))
    made = _ok(await http.post("/api/v1/tools", json=weather("weather"), headers=admin), 201)
    assert made["builtin"] is False and made["config"]["url"].startswith("https://weather")
    assert _ok(await http.get("/api/v1/tools/weather", headers=viewer))["kind"] == "http"
    found = _ok(await http.get("/api/v1/tools/search", params={"q": "weather"}, headers=viewer))
    assert [t["id"] for t in found] == ["weather"]
    memory = _ok(await http.get("/api/v1/tools/search", params={"q": "memory"}, headers=viewer))
    assert [t["id"] for t in memory][:2] == ["memory-write", "search"]
    assert (await http.post("/api/v1/tools", json=weather("w2"), headers=viewer)).status_code == 403

    again = await http.post("/api/v1/tools", json=weather("weather"), headers=admin)
    assert again.status_code == 409 and "already exists" in again.json()["message"]
    builtin = await http.post("/api/v1/tools", json=weather("search"), headers=admin)
    assert builtin.status_code == 409 and "built in" in builtin.json()["message"]
    bad = {**weather("bad"), "parameters": {"type": "object", "properties": {"x": {"type": 7}}}}
    refused = await http.post("/api/v1/tools", json=bad, headers=admin)
    assert refused.status_code == 400 and "not a valid JSON Schema" in refused.json()["message"]
    wrong = {**weather("bad"), "kind": "memory"}
    refused = await http.post("/api/v1/tools", json=wrong, headers=admin)
    assert refused.status_code == 400 and refused.json()["code"] == "bad_request"

    kept = await http.delete("/api/v1/tools/search", headers=admin)
    assert kept.status_code == 409 and "built in" in kept.json()["message"]
    assert (await http.delete("/api/v1/tools/weather", headers=admin)).status_code == 204
    gone = await http.get("/api/v1/tools/weather", headers=viewer)
    assert gone.status_code == 404 and gone.json()["message"] == "tool 'weather' not found"


async def test_another_tenant_sees_none_of_a_tenant_s_tools_and_policies(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    a, b = bearer(srv.mint("admin", unique("a"))), bearer(srv.new_tenant())
    tool, policy = unique("own-tool"), unique("own-policy")
    _ok(await http.post("/api/v1/tools", json=weather(tool), headers=a), 201)
    _ok(await http.post("/api/v1/policies", json={"id": policy, "tools": ["*"]}, headers=a), 201)
    for path, what, name in (
        (f"/api/v1/tools/{tool}", "tool", tool),
        (f"/api/v1/policies/{policy}", "policy", policy),
    ):
        hidden = await http.get(path, headers=b)
        assert hidden.status_code == 404, hidden.text
        assert hidden.json()["message"] == f"{what} {name!r} not found"
    assert (await http.delete(f"/api/v1/tools/{tool}", headers=b)).status_code == 404
    assert (await http.delete(f"/api/v1/policies/{policy}", headers=b)).status_code == 404
    patched = await http.patch(f"/api/v1/policies/{policy}", json={"max_steps": 1}, headers=b)
    assert patched.status_code == 404
    evaluated = await http.post(
        f"/api/v1/policies/{policy}/evaluate", json={"tool_id": "search"}, headers=b
    )
    assert evaluated.status_code == 404
    on_a_s_tool = await http.post(
        "/api/v1/policies/default-safe/evaluate",
        json={"tool_id": tool, "arguments": {"city": "x"}},
        headers=b,
    )
    assert on_a_s_tool.status_code == 404 and "not found" in on_a_s_tool.json()["message"]
    for listing in ("/api/v1/tools", "/api/v1/policies", "/api/v1/policy-enforcements"):
        shown = await http.get(listing, headers=b)
        assert shown.status_code == 200 and tool not in shown.text and policy not in shown.text
    # ids are per tenant: B may have its own of the same id
    _ok(await http.post("/api/v1/tools", json=weather(tool), headers=b), 201)


async def test_policies_are_versioned_and_default_safe_is_fixed(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    admin = bearer(srv.mint("admin", unique("pol")))
    safe = _ok(await http.get("/api/v1/policies/default-safe", headers=admin))
    copy = {
        k: v
        for k, v in safe.items()
        if k not in ("version", "builtin", "created_at", "updated_at", "cedar")
    }
    copy["id"] = "ops"
    made = _ok(await http.post("/api/v1/policies", json=copy, headers=admin), 201)
    assert made["version"] == 1 and not made["builtin"]
    changed = _ok(
        await http.patch(
            "/api/v1/policies/ops",
            json={"tools": ["*"], "max_steps": 5, "redact": ["token"]},
            headers=admin,
        )
    )
    assert changed["version"] == 2 and changed["max_steps"] == 5
    assert changed["approval_required"] == ["run-code", "run-command"]  # kept
    bad = await http.patch("/api/v1/policies/ops", json={"max_steps": -1}, headers=admin)
    assert bad.status_code == 400 and "max_steps" in bad.json()["message"]
    for method in ("PATCH", "DELETE"):
        fixed = await http.request(
            method, "/api/v1/policies/default-safe", json={"max_steps": 99}, headers=admin
        )
        assert fixed.status_code == 409 and "built in" in fixed.json()["message"]
    taken = await http.post("/api/v1/policies", json={"id": "default-safe"}, headers=admin)
    assert taken.status_code == 409
    assert (await http.delete("/api/v1/policies/ops", headers=admin)).status_code == 204
    assert (await http.get("/api/v1/policies/ops", headers=admin)).status_code == 404


async def test_a_policy_naming_a_tool_the_tenant_lacks_is_refused(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    admin = bearer(srv.mint("admin", unique("pol")))
    for field, value in (
        ("tools", ["serach"]),
        ("approval_required", ["run-kode"]),
        ("constraints", [{"tool": "nope", "arg": "command", "allow": ["ls"]}]),
    ):
        body = {"id": unique("typo"), "tools": ["search"], field: value}
        refused = await http.post("/api/v1/policies", json=body, headers=admin)
        assert refused.status_code == 400, (field, refused.text)
        assert "which this tenant does not have" in refused.json()["message"]
    fine = {"id": unique("ok"), "tools": ["*"], "approval_required": ["run-code"]}
    made = _ok(await http.post("/api/v1/policies", json=fine, headers=admin), 201)
    changed = await http.patch(
        f"/api/v1/policies/{made['id']}", json={"tools": ["serach"]}, headers=admin
    )
    assert changed.status_code == 400 and "'serach'" in changed.json()["message"]


async def _evaluate(
    http: httpx.AsyncClient, headers: dict[str, str], policy: str, **body: Any
) -> httpx.Response:
    return await http.post(f"/api/v1/policies/{policy}/evaluate", json=body, headers=headers)


async def test_evaluate_decides_keeps_an_enforcement_and_links_the_audit_event(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant = unique("eval")
    admin, operator = bearer(srv.mint("admin", tenant)), bearer(srv.mint("operator", tenant))
    allowed = _ok(
        await _evaluate(http, operator, "default-safe", tool_id="search", arguments={"query": "q"})
    )
    assert allowed["decision"] == "allow" and allowed["policy_ids"] == ["default-safe#tools"]
    held = _ok(
        await _evaluate(
            http, operator, "default-safe", tool_id="run-command", arguments={"command": "ls"}
        )
    )
    assert held["decision"] == "approval" and held["needs_approval"]
    denied = _ok(
        await _evaluate(
            http, operator, "default-safe", tool_id="scale", arguments={"app": "w", "instances": 2}
        )
    )
    assert denied["decision"] == "deny"
    assert denied["reasons"] == ["tool 'scale' is not among the tools of policy 'default-safe'"]
    spent = _ok(
        await _evaluate(
            http,
            operator,
            "default-safe",
            tool_id="search",
            arguments={"query": "q"},
            counters={"tokens_run": 50_000},
        )
    )
    assert spent["decision"] == "deny"
    assert spent["reasons"] == ["the run used its budget of 50000 tokens"]

    invalid = await _evaluate(http, operator, "default-safe", tool_id="search", arguments={})
    assert invalid.status_code == 400
    assert invalid.json()["message"] == (
        "invalid arguments for tool 'search': 'query' is a required property"
    )
    unknown = await _evaluate(http, operator, "default-safe", tool_id="nope")
    assert unknown.status_code == 404 and unknown.json()["message"] == "tool 'nope' not found"
    viewer = bearer(srv.mint("viewer", tenant))
    refused = await _evaluate(http, viewer, "default-safe", tool_id="search")
    assert refused.status_code == 403

    # an http tool: its own host is checked against the egress hosts; a secret redacted
    _ok(await http.post("/api/v1/tools", json=weather("weather"), headers=admin), 201)
    policy = {
        "id": "web",
        "tools": ["weather"],
        "egress_hosts": ["weather.example.com"],
        "redact": ["token"],
    }
    _ok(await http.post("/api/v1/policies", json=policy, headers=admin), 201)
    web = _ok(
        await _evaluate(
            http,
            operator,
            "web",
            tool_id="weather",
            arguments={"city": "Oslo", "token": "s3cret"},
            principal="agt_1",
            principal_kind="agent",
        )
    )
    assert web["decision"] == "allow"
    blocked = _ok(
        await _evaluate(http, operator, "default-safe", tool_id="weather", arguments={"city": "x"})
    )
    assert blocked["decision"] == "deny"

    page = _ok(await http.get("/api/v1/policy-enforcements", headers=admin))
    rows = page["enforcements"]
    assert [r["tool_id"] for r in rows[:2]] == ["weather", "weather"]  # newest first
    kept = next(r for r in rows if r["id"] == web["enforcement_id"])
    assert kept["arguments"] == {"city": "Oslo", "token": "[redacted]"}
    assert kept["principal"] == "agent:agt_1" and kept["policy_id"] == "web"
    assert kept["run_id"] is None and kept["step"] is None
    assert "s3cret" not in str(page)
    approvals = _ok(
        await http.get(
            "/api/v1/policy-enforcements", params={"decision": "approval"}, headers=admin
        )
    )
    assert [r["id"] for r in approvals["enforcements"]] == [held["enforcement_id"]]
    first = _ok(await http.get("/api/v1/policy-enforcements", params={"limit": 2}, headers=admin))
    assert len(first["enforcements"]) == 2 and first["cursor"] is not None
    rest = _ok(
        await http.get(
            "/api/v1/policy-enforcements", params={"before": first["cursor"]}, headers=admin
        )
    )
    assert {r["id"] for r in rest["enforcements"]}.isdisjoint(
        {r["id"] for r in first["enforcements"]}
    )
    assert len(rest["enforcements"]) + 2 == len(rows)
    assert (await http.get("/api/v1/policy-enforcements", headers=operator)).status_code == 403

    audit = _ok(
        await http.get(
            "/api/v1/audit",
            params={"action": "POST /policies/{policy_id}/evaluate"},
            headers=admin,
        )
    )
    details = [e["detail"] for e in audit["events"] if e["status"] == 200]
    assert f"policy enforcement {web['enforcement_id']}: allow weather under web v1" in details


async def test_sync_upserts_tools_from_yaml(srv: RunningServer, http: httpx.AsyncClient) -> None:
    admin = bearer(srv.mint("admin", unique("sync")))
    document = """
tools:
  - id: lookup
    kind: app
    description: Look an order up in the shop app
    parameters: {type: object, properties: {order: {type: string}}, required: [order]}
    config: {app: shop, path: /orders/lookup, method: POST}
  - id: docs
    kind: mcp
    description: Tools of the docs MCP server
    config: {url: "http://127.0.0.1:9000/mcp"}
"""
    yaml_headers = {**admin, "content-type": "application/yaml"}
    synced = _ok(await http.post("/api/v1/tools/sync", content=document, headers=yaml_headers))
    assert synced == {"added": ["lookup", "docs"], "updated": []}
    changed = document.replace("Look an order up", "Find an order")
    again = _ok(await http.post("/api/v1/tools/sync", json={"yaml": changed}, headers=admin))
    assert again == {"added": [], "updated": ["lookup", "docs"]}
    lookup = _ok(await http.get("/api/v1/tools/lookup", headers=admin))
    assert lookup["description"] == "Find an order in the shop app"

    for bad, message in (
        ("tools: [", "does not parse"),
        (
            "- id: search\n  kind: memory\n  description: x\n  config: {operation: search}",
            "built in",
        ),
        (
            "- id: x\n  kind: http\n  description: y\n  config: {url: 'ftp://h'}",
            "tool #1 is invalid",
        ),
        ("just text", "a list of tools"),
        ("- &a {id: x}\n- *a", "alias"),
    ):
        refused = await http.post("/api/v1/tools/sync", content=bad, headers=yaml_headers)
        assert refused.status_code == 400, refused.text
        assert message in refused.json()["message"], refused.text


def test_sync_is_off_unless_the_setting_turns_it_on(tmp_path: Path) -> None:
    with running_server(tmp_path) as off:
        answer = httpx.post(
            f"{off.base_url}/api/v1/tools/sync",
            json={"yaml": "[]"},
            headers=bearer(off.admin_token),
        )
    assert answer.status_code == 404
    assert answer.json()["code"] == "not_found"
    assert "AETHER_AGENT_TOOLS_SYNC" in answer.json()["message"]


async def test_deleting_a_tenant_deletes_its_tools_policies_and_enforcements(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    name = unique("gone")
    admin = bearer(srv.mint("admin", name))
    _ok(await http.post("/api/v1/tools", json=weather("weather"), headers=admin), 201)
    _ok(
        await http.post("/api/v1/policies", json={"id": "mine", "tools": ["*"]}, headers=admin), 201
    )
    await _evaluate(http, admin, "mine", tool_id="weather", arguments={"city": "x"})
    tenant_id = srv.run(srv.ctx.records.tenant_id_of(name))
    assert tenant_id is not None

    deleted = await http.delete(f"/api/v1/tenants/{name}", headers=bearer(srv.admin_token))
    assert deleted.status_code == 200, deleted.text
    assert srv.run(srv.ctx.records.agent_tools(tenant_id)) == []
    assert srv.run(srv.ctx.records.agent_policies(tenant_id)) == []
    assert srv.run(srv.ctx.records.enforcements(tenant_id)) == []


def test_the_garbage_collector_trims_old_policy_enforcements(tmp_path: Path) -> None:
    with running_server(tmp_path, policy_enforcements_retention_days=30) as server:
        admin = bearer(server.admin_token)
        made = httpx.post(
            f"{server.base_url}/api/v1/policies/default-safe/evaluate",
            json={"tool_id": "search", "arguments": {"query": "x"}},
            headers=admin,
        )
        assert made.status_code == 200, made.text
        tenant_id = server.run(server.ctx.records.tenant_id_of("default"))
        assert tenant_id is not None
        assert len(server.run(server.ctx.records.enforcements(tenant_id))) == 1
        soon = server.run(collect_garbage(server.ctx, now=time.time() + 29 * 86400))
        assert soon.trimmed_policy_enforcements == 0
        later = server.run(collect_garbage(server.ctx, now=time.time() + 31 * 86400))
        assert later.trimmed_policy_enforcements == 1
        assert server.run(server.ctx.records.enforcements(tenant_id)) == []

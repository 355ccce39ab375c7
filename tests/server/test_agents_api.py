"""AI agents and the agent catalog over HTTP (issue 17), on a real in-process server.

The contract of ``POST /api/v1/agents`` exactly (201 shape; 404 ``invalid_input`` for
an unknown model, policy or tool; 409, 400, 401, 403, 429), recipes, versions,
disable and enable, the agent file (export without secrets, import), the unversioned
``/api/agents`` alias, audit events, and another tenant's agents answering 404.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.support.api import assert_envelope, audit_events, bearer, unique
from tests.support.server import RunningServer, running_server

SECRET_KEY = "sk-the-model-secret-0123456789"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("agents")) as s:
        yield s


@pytest.fixture
async def http(srv: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=10.0) as client:
        yield client


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def _tenant(srv: RunningServer, http: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    """A fresh tenant with a model ``gpt-4o`` (and its key) and a tool ``weather``:
    (tenant, admin headers)."""
    tenant = unique("agents")
    admin = bearer(srv.mint("admin", tenant))
    model = {
        "name": "gpt-4o",
        "base_url": "http://127.0.0.1:9/v1",
        "model_id": "gpt-4o",
        "api_key": SECRET_KEY,
    }
    _ok(await http.post("/api/v1/models", json=model, headers=admin), 201)
    return tenant, admin


CONTRACT_BODY = {
    "name": "my-agent",
    "model": "model://gpt-4o",
    "policy_ids": ["default-safe"],
    "tool_ids": ["search"],
    "config": {"max_tokens": 1024},
}


async def test_create_answers_the_contract_s_201(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant, _ = await _tenant(srv, http)
    operator = bearer(srv.mint("operator", tenant))
    made = _ok(await http.post("/api/v1/agents", json=CONTRACT_BODY, headers=operator), 201)
    assert made["id"].startswith("agt_") and len(made["id"]) == 4 + 24
    int(made["id"][4:], 16)
    assert made["status"] == "created" and made["deployment"] is None
    assert made["name"] == "my-agent" and made["model"] == "model://gpt-4o"
    assert made["policy_ids"] == ["default-safe"] and made["tool_ids"] == ["search"]
    assert made["config"] == {"max_tokens": 1024} and made["system_prompt"] == ""
    assert made["version"] == 1 and made["created_at"].endswith("+00:00")
    assert made["updated_at"].endswith("+00:00") and made["disabled_at"] is None
    got = _ok(await http.get(f"/api/v1/agents/{made['id']}", headers=operator))
    assert got == made


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "model://nope"}, "model not found"),
        ({"policy_ids": ["default-safe", "nope"]}, "policy not found"),
        ({"tool_ids": ["search", "nope"]}, "tool not found"),
    ],
)
async def test_an_unknown_model_policy_or_tool_is_404_invalid_input(
    srv: RunningServer, http: httpx.AsyncClient, change: dict[str, Any], message: str
) -> None:
    _, admin = await _tenant(srv, http)
    response = await http.post("/api/v1/agents", json={**CONTRACT_BODY, **change}, headers=admin)
    body = assert_envelope(response, 404, "invalid_input")
    assert body["message"] == message
    listed = _ok(await http.get("/api/v1/agents", headers=admin))
    assert listed["agents"] == []


async def test_duplicate_names_bad_bodies_and_roles(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant, admin = await _tenant(srv, http)
    _ok(await http.post("/api/v1/agents", json=CONTRACT_BODY, headers=admin), 201)
    again = await http.post("/api/v1/agents", json=CONTRACT_BODY, headers=admin)
    assert assert_envelope(again, 409, "conflict")["message"] == "agent 'my-agent' already exists"
    # the same name in another tenant is another agent
    other_tenant, other = await _tenant(srv, http)
    _ok(await http.post("/api/v1/agents", json=CONTRACT_BODY, headers=other), 201)
    for bad in (
        {**CONTRACT_BODY, "name": "Not A Name"},
        {**CONTRACT_BODY, "model": "gpt-4o"},  # not model://NAME
        {**CONTRACT_BODY, "config": [1]},
        {**CONTRACT_BODY, "surprise": True},
        {"name": "no-model"},
    ):
        assert_envelope(
            await http.post("/api/v1/agents", json=bad, headers=admin), 400, "bad_request"
        )
    viewer = bearer(srv.mint("viewer", tenant))
    refused = await http.post("/api/v1/agents", json=CONTRACT_BODY, headers=viewer)
    assert_envelope(refused, 403, "forbidden")
    assert_envelope(await http.post("/api/v1/agents", json=CONTRACT_BODY), 401, "unauthorized")
    assert other_tenant != tenant


async def test_a_tenant_over_its_rate_gets_429(srv: RunningServer, http: httpx.AsyncClient) -> None:
    tenant, admin = await _tenant(srv, http)
    limits = {"rate_per_minute": 1, "burst": 1}
    cluster = bearer(srv.admin_token)
    _ok(await http.put(f"/api/v1/tenants/{tenant}/limits", json=limits, headers=cluster))
    answers = [
        await http.post(path, json={**CONTRACT_BODY, "name": f"a{n}"}, headers=admin)
        for n, path in enumerate(("/api/v1/agents", "/api/v1/agents", "/api/agents"))
    ]
    assert answers[0].status_code == 201, answers[0].text
    assert_envelope(answers[1], 429, "rate_limited")
    assert_envelope(answers[2], 429, "rate_limited")  # the alias counts the same


async def test_recipes_built_in_and_the_tenant_s_own(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant, admin = await _tenant(srv, http)
    viewer = bearer(srv.mint("viewer", tenant))
    catalog = _ok(await http.get("/api/v1/agent-catalog", headers=viewer))
    by_id = {r["id"]: r for r in catalog}
    assert list(by_id) == ["code-runner", "ops-assistant", "docs-qa"]
    assert by_id["code-runner"]["tool_ids"] == ["run-code", "run-command"]
    assert by_id["code-runner"]["policy_ids"] == ["default-safe"]
    assert by_id["ops-assistant"]["tool_ids"] == ["cluster-status", "apps-list"]
    assert by_id["ops-assistant"]["config"]["read_only"] is True
    assert by_id["docs-qa"]["tool_ids"] == ["search", "memory-write"]
    assert all(r["builtin"] and r["open"] == ["model"] and r["model"] is None for r in catalog)
    assert _ok(await http.get("/api/v1/agent-catalog/docs-qa", headers=viewer)) == by_id["docs-qa"]

    # from a recipe: only what it leaves open is asked for
    missing = await http.post(
        "/api/v1/agents", json={"recipe": "code-runner", "name": "coder"}, headers=admin
    )
    assert "leaves open: model" in assert_envelope(missing, 400, "bad_request")["message"]
    coder = _ok(
        await http.post(
            "/api/v1/agents",
            json={"recipe": "code-runner", "name": "coder", "model": "model://gpt-4o"},
            headers=admin,
        ),
        201,
    )
    assert coder["tool_ids"] == ["run-code", "run-command"]
    assert coder["policy_ids"] == ["default-safe"] and coder["system_prompt"]
    unknown = await http.post(
        "/api/v1/agents",
        json={"recipe": "nope", "name": "x", "model": "model://gpt-4o"},
        headers=admin,
    )
    assert assert_envelope(unknown, 404, "invalid_input")["message"] == "recipe not found"

    # the tenant's own recipe, with two open fields
    own = {
        "id": "helper",
        "name": "Helper",
        "model": "model://gpt-4o",
        "tool_ids": ["search"],
        "open": ["system_prompt", "config"],
    }
    assert_envelope(
        await http.post("/api/v1/agent-catalog", json=own, headers=viewer), 403, "forbidden"
    )
    made = _ok(await http.post("/api/v1/agent-catalog", json=own, headers=admin), 201)
    assert made["builtin"] is False
    conflict = await http.post("/api/v1/agent-catalog", json=own, headers=admin)
    assert_envelope(conflict, 409, "conflict")
    builtin = await http.post("/api/v1/agent-catalog", json={**own, "id": "docs-qa"}, headers=admin)
    assert "built in" in assert_envelope(builtin, 409, "conflict")["message"]
    no_model = {"id": "bare", "name": "Bare"}  # no model, and not left open
    assert_envelope(
        await http.post("/api/v1/agent-catalog", json=no_model, headers=admin), 400, "bad_request"
    )
    bad_tool = {**own, "id": "bad", "tool_ids": ["nope"]}
    refused = await http.post("/api/v1/agent-catalog", json=bad_tool, headers=admin)
    assert assert_envelope(refused, 404, "invalid_input")["message"] == "tool not found"
    half = await http.post(
        "/api/v1/agents",
        json={"recipe": "helper", "name": "h", "system_prompt": "Be brief."},
        headers=admin,
    )
    assert "leaves open: config" in assert_envelope(half, 400, "bad_request")["message"]
    helper = _ok(
        await http.post(
            "/api/v1/agents",
            json={"recipe": "helper", "name": "h", "system_prompt": "Be brief.", "config": {}},
            headers=admin,
        ),
        201,
    )
    assert helper["model"] == "model://gpt-4o" and helper["system_prompt"] == "Be brief."
    ids = [r["id"] for r in _ok(await http.get("/api/v1/agent-catalog", headers=viewer))]
    assert ids == ["code-runner", "ops-assistant", "docs-qa", "helper"]

    kept = await http.delete("/api/v1/agent-catalog/code-runner", headers=admin)
    assert_envelope(kept, 409, "conflict")
    assert (await http.delete("/api/v1/agent-catalog/helper", headers=admin)).status_code == 204
    gone = await http.get("/api/v1/agent-catalog/helper", headers=viewer)
    assert assert_envelope(gone, 404, "not_found")["message"] == "recipe 'helper' not found"


async def test_patch_makes_versions_and_disable_is_idempotent(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant, admin = await _tenant(srv, http)
    made = _ok(await http.post("/api/v1/agents", json=CONTRACT_BODY, headers=admin), 201)
    url = f"/api/v1/agents/{made['id']}"
    patched = _ok(
        await http.patch(url, json={"system_prompt": "Be kind.", "tool_ids": []}, headers=admin)
    )
    assert patched["version"] == 2 and patched["system_prompt"] == "Be kind."
    assert patched["tool_ids"] == [] and patched["config"] == {"max_tokens": 1024}
    bad = await http.patch(url, json={"tool_ids": ["nope"]}, headers=admin)
    assert assert_envelope(bad, 404, "invalid_input")["message"] == "tool not found"
    assert_envelope(await http.patch(url, json={}, headers=admin), 400, "bad_request")
    viewer = bearer(srv.mint("viewer", tenant))
    assert_envelope(await http.patch(url, json={"config": {}}, headers=viewer), 403, "forbidden")
    versions = _ok(await http.get(f"{url}/versions", headers=viewer))
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[1]["tool_ids"] == ["search"] and versions[1]["system_prompt"] == ""
    assert all(v["created_by"] for v in versions)

    disabled = _ok(await http.post(f"{url}/disable", headers=admin))
    assert disabled["status"] == "disabled" and disabled["disabled_at"]
    again = _ok(await http.post(f"{url}/disable", headers=admin))
    assert again["status"] == "disabled" and again["disabled_at"] == disabled["disabled_at"]
    listed = _ok(await http.get("/api/v1/agents", params={"status": "disabled"}, headers=viewer))
    assert [a["id"] for a in listed["agents"]] == [made["id"]]
    actions = {e["action"] for e in await audit_events(http, srv.mint("admin", tenant))}
    assert {"POST /agents", "PATCH /agents/{agent_id}", "POST /agents/{agent_id}/disable"} <= (
        actions
    ), actions
    enabled = _ok(await http.post(f"{url}/enable", headers=admin))
    assert enabled["status"] == "created" and enabled["disabled_at"] is None
    assert _ok(await http.get("/api/v1/agents", params={"status": "disabled"}, headers=viewer)) == {
        "agents": [],
        "cursor": None,
    }


async def test_the_list_pages_by_name(srv: RunningServer, http: httpx.AsyncClient) -> None:
    _, admin = await _tenant(srv, http)
    for name in ("c", "a", "b"):
        body = {"name": name, "model": "model://gpt-4o"}
        _ok(await http.post("/api/v1/agents", json=body, headers=admin), 201)
    first = _ok(await http.get("/api/v1/agents", params={"limit": 2}, headers=admin))
    assert [a["name"] for a in first["agents"]] == ["a", "b"] and first["cursor"] == "b"
    rest = _ok(await http.get("/api/v1/agents", params={"after": "b"}, headers=admin))
    assert [a["name"] for a in rest["agents"]] == ["c"] and rest["cursor"] is None
    named = _ok(await http.get("/api/v1/agents", params={"name": "b"}, headers=admin))
    assert [a["name"] for a in named["agents"]] == ["b"]


def weather(tool_id: str) -> dict[str, Any]:
    return {
        "id": tool_id,
        "kind": "http",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "config": {"url": "https://weather.example.com/{city}", "headers": {"X-Key": "weather"}},
    }


async def test_export_and_import_round_trip_without_secrets(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    _, admin = await _tenant(srv, http)
    _ok(await http.post("/api/v1/tools", json=weather("weather"), headers=admin), 201)
    policy = {"id": "strict", "tools": ["weather", "search"], "max_steps": 5}
    _ok(await http.post("/api/v1/policies", json=policy, headers=admin), 201)
    body = {
        "name": "forecaster",
        "model": "model://gpt-4o",
        "policy_ids": ["strict", "default-safe"],
        "tool_ids": ["weather", "search"],
        "system_prompt": "Forecast.",
        "config": {"temperature": 0.2},
    }
    made = _ok(await http.post("/api/v1/agents", json=body, headers=admin), 201)
    exported = await http.get(f"/api/v1/agents/{made['id']}/export", headers=admin)
    document = _ok(exported)
    assert SECRET_KEY not in exported.text and "api_key" not in exported.text
    assert document["aether_agent"] == 1 and document["model"] == "model://gpt-4o"
    assert {k: document[k] for k in body} == body
    assert [t["id"] for t in document["tools"]] == ["weather"]  # built-ins are not carried
    assert [p["id"] for p in document["policies"]] == ["strict"]
    assert document["policies"][0]["max_steps"] == 5

    # into a tenant that has the model but not the tool or the policy
    tenant_b, admin_b = await _tenant(srv, http)
    imported = _ok(await http.post("/api/v1/agents/import", json=document, headers=admin_b), 201)
    assert imported["id"] != made["id"] and imported["status"] == "created"
    assert {k: imported[k] for k in body} == body and imported["version"] == 1
    tool = _ok(await http.get("/api/v1/tools/weather", headers=admin_b))
    assert tool["config"]["url"] == "https://weather.example.com/{city}"
    assert _ok(await http.get("/api/v1/policies/strict", headers=admin_b))["max_steps"] == 5
    imports = await audit_events(http, srv.mint("admin", tenant_b), action="POST /agents/import")
    assert [e["status"] for e in imports] == [201], imports
    again = await http.post("/api/v1/agents/import", json=document, headers=admin_b)
    assert_envelope(again, 409, "conflict")

    # a tenant without the model: nothing is written
    bare = unique("bare")
    admin_c = bearer(srv.mint("admin", bare))
    refused = await http.post("/api/v1/agents/import", json=document, headers=admin_c)
    assert assert_envelope(refused, 404, "invalid_input")["message"] == "model not found"
    assert [t["id"] for t in _ok(await http.get("/api/v1/tools", headers=admin_c))].count(
        "weather"
    ) == 0
    bad = {**document, "aether_agent": 2}
    assert_envelope(
        await http.post("/api/v1/agents/import", json=bad, headers=admin_b), 400, "bad_request"
    )
    assert tenant_b != bare
    json.dumps(document)  # a file: plain JSON


async def test_another_tenant_gets_404_on_every_agent_route(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    _, admin = await _tenant(srv, http)
    made = _ok(await http.post("/api/v1/agents", json=CONTRACT_BODY, headers=admin), 201)
    _ok(
        await http.post(
            "/api/v1/agent-catalog",
            json={"id": "mine", "name": "Mine", "open": ["model"]},
            headers=admin,
        ),
        201,
    )
    _, other = await _tenant(srv, http)
    url = f"/api/v1/agents/{made['id']}"
    for method, path, body in (
        ("GET", url, None),
        ("PATCH", url, {"config": {}}),
        ("GET", f"{url}/versions", None),
        ("POST", f"{url}/disable", None),
        ("POST", f"{url}/enable", None),
        ("GET", f"{url}/export", None),
        ("GET", "/api/v1/agent-catalog/mine", None),
        ("DELETE", "/api/v1/agent-catalog/mine", None),
    ):
        response = await http.request(method, path, json=body, headers=other)
        assert_envelope(response, 404, "not_found")
    assert _ok(await http.get("/api/v1/agents", headers=other))["agents"] == []
    assert [r["id"] for r in _ok(await http.get("/api/v1/agent-catalog", headers=other))] == [
        "code-runner",
        "ops-assistant",
        "docs-qa",
    ]
    assert _ok(await http.get(url, headers=admin))["status"] == "created"


async def test_the_unversioned_alias_answers_the_same_and_is_audited(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant, admin = await _tenant(srv, http)
    made = _ok(await http.post("/api/agents", json=CONTRACT_BODY, headers=admin), 201)
    assert made["id"].startswith("agt_") and made["deployment"] is None
    assert _ok(await http.get(f"/api/agents/{made['id']}", headers=admin)) == made
    assert _ok(await http.get(f"/api/v1/agents/{made['id']}", headers=admin)) == made
    listed = _ok(await http.get("/api/agents", headers=admin))
    assert [a["id"] for a in listed["agents"]] == [made["id"]]
    assert len(_ok(await http.get("/api/agent-catalog", headers=admin))) == 3
    assert _ok(await http.get("/api/agent-catalog/docs-qa", headers=admin))["id"] == "docs-qa"
    # auth and errors apply the same
    assert_envelope(await http.get("/api/agents"), 401, "unauthorized")
    unknown = await http.post(
        "/api/agents", json={**CONTRACT_BODY, "name": "x", "model": "model://nope"}, headers=admin
    )
    assert assert_envelope(unknown, 404, "invalid_input")["message"] == "model not found"
    _ok(await http.post(f"/api/agents/{made['id']}/disable", headers=admin))
    # mutations through either form are audited as the /api/v1 routes
    events = await audit_events(http, srv.mint("admin", tenant))
    seen = {(e["action"], e["target"]) for e in events}
    assert ("POST /agents", "agents") in seen, seen
    assert ("POST /agents/{agent_id}/disable", f"agents/{made['id']}/disable") in seen, seen
    assert not any(e["target"].startswith("api/") for e in events), events
    # an Idempotency-Key replays through the alias as through /api/v1
    key = {**admin, "Idempotency-Key": unique("key")}
    body = {**CONTRACT_BODY, "name": "once"}
    first = _ok(await http.post("/api/agents", json=body, headers=key), 201)
    assert _ok(await http.post("/api/v1/agents", json=body, headers=key), 201) == first
    # other paths under /api are not aliased
    assert (await http.get("/api/models", headers=admin)).status_code == 404

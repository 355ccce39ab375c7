"""``POST /api/v1/policies/{id}/simulate``: the tool calls a policy decided, replayed under a
changed policy — what it would allow, deny or hold for approval — without keeping or
switching on anything; each role, another tenant's policy and decisions, bad bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.api import assert_envelope, bearer, unique
from tests.support.server import RunningServer


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=15.0) as client:
        yield client


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


OPEN = {"tools": ["run-command", "search"], "egress_hosts": []}
#: the same policy, tightened: a command may only start with ls
TIGHT = {
    **OPEN,
    "constraints": [{"tool": "run-command", "arg": "command", "allow": ["ls"]}],
}


async def _decide(
    http: httpx.AsyncClient, headers: dict[str, str], policy: str, tool: str, **args: Any
) -> dict[str, Any]:
    body = {"tool_id": tool, "arguments": args, "principal": "agt_sim", "principal_kind": "agent"}
    answer: dict[str, Any] = _ok(
        await http.post(f"/api/v1/policies/{policy}/evaluate", json=body, headers=headers)
    )
    return answer


async def _tenant_with_history(
    server: RunningServer, http: httpx.AsyncClient
) -> tuple[str, str, list[dict[str, Any]]]:
    """A tenant with policy OPEN and three decisions under it (oldest first)."""
    tenant, policy = unique("sim"), unique("ops")
    admin, operator = bearer(server.mint("admin", tenant)), bearer(server.mint("operator", tenant))
    _ok(await http.post("/api/v1/policies", json={"id": policy, **OPEN}, headers=admin), 201)
    decided = [
        await _decide(http, operator, policy, "run-command", command="ls -la"),
        await _decide(http, operator, policy, "run-command", command="rm -rf /data"),
        await _decide(http, operator, policy, "search", query="logs"),
    ]
    assert [d["decision"] for d in decided] == ["allow", "allow", "allow"]
    return tenant, policy, decided


async def _simulate(
    http: httpx.AsyncClient, headers: dict[str, str], policy_id: str, **body: Any
) -> httpx.Response:
    return await http.post(f"/api/v1/policies/{policy_id}/simulate", json=body, headers=headers)


async def test_tightening_a_policy_flips_a_recorded_allow_to_deny_and_keeps_nothing(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant, policy, decided = await _tenant_with_history(server, http)
    admin, operator = bearer(server.mint("admin", tenant)), bearer(server.mint("operator", tenant))
    before = _ok(await http.get("/api/v1/policy-enforcements", headers=admin))["enforcements"]

    answer = _ok(await _simulate(http, operator, policy, policy={"id": policy, **TIGHT}))

    assert answer["policy_id"] == policy
    assert answer["replayed"] == 3 and answer["changed"] == 1
    assert (answer["would_allow"], answer["would_deny"], answer["would_need_approval"]) == (
        2,
        1,
        0,
    )
    first, *rest = answer["calls"]
    assert first["enforcement_id"] == decided[1]["enforcement_id"]  # the changed one first
    assert (first["old"], first["new"], first["tool_id"]) == ("allow", "deny", "run-command")
    assert first["principal"] == "agent:agt_sim"
    assert first["reasons"] == ["argument 'command' of 'run-command' must run one of: ls"]
    assert datetime.fromisoformat(first["at"]).tzinfo is not None
    # the unchanged ones after, newest first
    assert [c["enforcement_id"] for c in rest] == [
        decided[2]["enforcement_id"],
        decided[0]["enforcement_id"],
    ]
    assert all(c["old"] == c["new"] == "allow" for c in rest)

    # nothing kept, nothing switched on
    after = _ok(await http.get("/api/v1/policy-enforcements", headers=admin))["enforcements"]
    assert after == before
    stored = _ok(await http.get(f"/api/v1/policies/{policy}", headers=admin))
    assert stored["version"] == 1 and stored["constraints"] == []
    again = await _decide(http, operator, policy, "run-command", command="rm -rf /data")
    assert again["decision"] == "allow"


async def test_approval_limit_and_since_choose_what_is_replayed(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant, policy, decided = await _tenant_with_history(server, http)
    operator = bearer(server.mint("operator", tenant))
    held = {**OPEN, "approval_required": ["run-command"]}
    answer = _ok(await _simulate(http, operator, policy, policy=held))  # the id may be left out
    assert (answer["changed"], answer["would_need_approval"], answer["would_allow"]) == (2, 2, 1)
    assert {c["new"] for c in answer["calls"][:2]} == {"approval"}

    newest = _ok(await _simulate(http, operator, policy, policy=TIGHT, limit=1))
    assert newest["replayed"] == 1
    assert newest["calls"][0]["enforcement_id"] == decided[2]["enforcement_id"]

    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    none = _ok(await _simulate(http, operator, policy, policy=TIGHT, since=later))
    assert none["replayed"] == 0 and none["calls"] == []
    earlier = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    all_ = _ok(await _simulate(http, operator, policy, policy=TIGHT, since=earlier))
    assert all_["replayed"] == 3


@pytest.mark.parametrize(("role", "status"), [("viewer", 403), ("operator", 200), ("admin", 200)])
async def test_simulate_needs_the_operator_role(
    server: RunningServer, http: httpx.AsyncClient, role: str, status: int
) -> None:
    tenant, policy, _ = await _tenant_with_history(server, http)
    answer = await _simulate(http, bearer(server.mint(role, tenant)), policy, policy=TIGHT)
    if status == 200:
        assert _ok(answer)["replayed"] == 3
    else:
        assert_envelope(answer, 403, "forbidden")
    assert_envelope(await _simulate(http, {}, policy, policy=TIGHT), 401, "unauthorized")


async def test_another_tenants_policy_and_decisions_are_not_found_or_replayed(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant, policy, _ = await _tenant_with_history(server, http)
    other = bearer(server.new_tenant())
    hidden = await _simulate(http, other, policy, policy=TIGHT)
    assert assert_envelope(hidden, 404, "not_found")["message"] == f"policy {policy!r} not found"
    unknown = await _simulate(http, other, "no-such-policy", policy={})
    assert_envelope(unknown, 404, "not_found")
    # default-safe is every tenant's; each replays only its own decisions under it
    operator = bearer(server.mint("operator", tenant))
    await _decide(http, operator, "default-safe", "search", query="mine")
    fresh = _ok(await _simulate(http, other, "default-safe", policy={"tools": ["search"]}))
    assert fresh["replayed"] == 0
    own = _ok(await _simulate(http, operator, "default-safe", policy={"tools": []}))
    assert own["replayed"] == 1 and own["calls"][0]["new"] == "deny"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"policy": {"tools": "run-command"}}, "invalid policy: tools"),
        ({"policy": {"constraints": [{"tool": "*", "arg": "x"}]}}, "exactly one of"),
        ({"policy": {"max_steps": -1}}, "invalid policy: max_steps"),
        ({"policy": {"surprise": 1}}, "invalid policy: surprise"),
        ({"policy": {"tools": ["no-such-tool"]}}, "names tool 'no-such-tool'"),
        ({"policy": {"id": "another"}}, "is not"),
        ({}, "invalid request"),
        ({"policy": {}, "limit": 0}, "invalid request"),
        ({"policy": {}, "since": "yesterday"}, "invalid request"),
    ],
)
async def test_a_bad_body_is_a_400_envelope(
    server: RunningServer, http: httpx.AsyncClient, body: dict[str, Any], says: str
) -> None:
    tenant = unique("simbad")
    operator = bearer(server.mint("operator", tenant))
    answer = await http.post("/api/v1/policies/default-safe/simulate", json=body, headers=operator)
    assert says in assert_envelope(answer, 400, "bad_request")["message"]

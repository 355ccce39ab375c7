"""Deploying agents (issue 17, item 4) on a real in-process server with nodes that
register over HTTP: the deploy contract, the leader's placement of replicas on live
nodes (drained and lost nodes' replicas move, each change a decision), disable and
undeploy withdrawing replicas, and only a node with a placement claiming the agent's
queue ``agent.{id}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from aether.client import ApiClient
from aether.model.risk import SignalIn
from aether.tasks.queue.base import NewTask
from tests.support.api import assert_envelope, audit_events, bearer, unique
from tests.support.fake_nodes import FakeNodes
from tests.support.server import RunningServer, running_server
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(
        tmp_path_factory.mktemp("agent-deploy"), lease_ttl=120.0, rebalance_interval=0.0
    ) as s:
        yield s


@pytest.fixture
async def http(srv: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=10.0) as client:
        yield client


@pytest.fixture
async def nodes(srv: RunningServer) -> AsyncIterator[FakeNodes]:
    fake = FakeNodes(srv)
    try:
        yield fake
    finally:
        await fake.close()


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def _agent(srv: RunningServer, http: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
    """A fresh tenant's new agent: (tenant, the agent's answer)."""
    tenant = unique("deploy")
    admin = bearer(srv.token("admin", tenant))
    model = {"name": "m", "base_url": "http://127.0.0.1:9/v1", "model_id": "m"}
    _ok(await http.post("/api/v1/models", json=model, headers=admin), 201)
    body = {"name": unique("agent"), "model": "model://m", "tool_ids": ["search"]}
    return tenant, _ok(await http.post("/api/v1/agents", json=body, headers=admin), 201)


async def _placed(
    http: httpx.AsyncClient, headers: dict[str, str], agent_id: str, count: int
) -> dict[str, Any]:
    """The agent once its deployment runs ``count`` replicas."""

    async def check() -> dict[str, Any] | None:
        got: dict[str, Any] = _ok(await http.get(f"/api/v1/agents/{agent_id}", headers=headers))
        deployment = got["deployment"]
        return got if deployment and len(deployment["nodes"]) == count else None

    return await eventually(check, f"{count} replica(s) of {agent_id} placed")


async def test_deploy_answers_the_deployment_and_the_leader_places_the_replicas(
    srv: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    live = {await nodes.register(unique("n")) for _ in range(2)}
    tenant, agent = await _agent(srv, http)
    operator = bearer(srv.token("operator", tenant))
    url = f"/api/v1/agents/{agent['id']}/deploy"
    deployed = _ok(await http.post(url, json={"replicas": 2}, headers=operator))
    assert deployed["id"] == agent["id"] and deployed["status"] == "deployed"
    deployment = deployed["deployment"]
    assert set(deployment) == {"version", "replicas", "nodes", "status", "deployed_at"}
    assert deployment["version"] == 1 and deployment["replicas"] == 2
    assert deployment["status"] in ("pending", "running", "degraded")
    assert deployment["deployed_at"].endswith("+00:00")

    shown = await _placed(http, operator, agent["id"], 2)
    assert shown["deployment"]["status"] == "running"
    assert len(set(shown["deployment"]["nodes"])) == 2
    listed = _ok(await http.get("/api/v1/agents", params={"status": "deployed"}, headers=operator))
    assert [a["deployment"] for a in listed["agents"]] == [shown["deployment"]]
    # the default body: one replica of the version in use
    again = _ok(await http.post(url, headers=operator))
    assert again["deployment"]["replicas"] == 1
    await _placed(http, operator, agent["id"], 1)
    assert live  # (more nodes may be live: earlier tests' nodes)

    events = await audit_events(http, srv.token("admin", tenant), action="agent.deploy")
    assert len(events) == 2 and events[0]["target"] == f"agents/{agent['id']}/deploy"
    assert "replica" in events[0]["detail"]
    decisions = _ok(await http.get("/api/v1/decisions", params={"kind": "agent"}, headers=operator))
    assert {d["action"]["change"] for d in decisions} >= {"place", "remove"}
    assert all(d["target"] == agent["name"] for d in decisions)


async def test_deploy_pins_a_version_and_takes_the_agent_s_name(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant, agent = await _agent(srv, http)
    operator = bearer(srv.token("operator", tenant))
    by_name = f"/api/v1/agents/{agent['name']}"
    patched = _ok(await http.patch(by_name, json={"system_prompt": "v2"}, headers=operator))
    assert patched["id"] == agent["id"] and patched["version"] == 2
    pinned = _ok(await http.post(f"{by_name}/deploy", json={"version": 1}, headers=operator))
    assert pinned["version"] == 2 and pinned["deployment"]["version"] == 1
    latest = _ok(await http.post(f"{by_name}/deploy", json={"replicas": 3}, headers=operator))
    assert latest["deployment"]["version"] == 2 and latest["deployment"]["replicas"] == 3
    assert _ok(await http.get(by_name, headers=operator))["id"] == agent["id"]
    versions = _ok(await http.get(f"{by_name}/versions", headers=operator))
    assert [v["version"] for v in versions] == [2, 1]
    # the unversioned alias answers too
    alias = _ok(await http.post(f"/api/agents/{agent['id']}/deploy", headers=operator))
    assert alias["deployment"]["replicas"] == 1


@pytest.mark.parametrize(
    "body",
    [
        {"replicas": 0},
        {"replicas": 65},
        {"replicas": "two"},
        {"version": 0},
        {"replicas": 1, "nodes": ["n1"]},
    ],
)
async def test_a_bad_deploy_body_is_a_400(
    srv: RunningServer, http: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    tenant, agent = await _agent(srv, http)
    operator = bearer(srv.token("operator", tenant))
    response = await http.post(f"/api/v1/agents/{agent['id']}/deploy", json=body, headers=operator)
    assert_envelope(response, 400, "bad_request")


async def test_deploy_refusals(srv: RunningServer, http: httpx.AsyncClient) -> None:
    tenant, agent = await _agent(srv, http)
    url = f"/api/v1/agents/{agent['id']}/deploy"
    viewer = bearer(srv.token("viewer", tenant))
    assert_envelope(await http.post(url, headers=viewer), 403, "forbidden")
    other = bearer(srv.token("admin", unique("other")))
    assert_envelope(await http.post(url, headers=other), 404, "not_found")
    assert_envelope(await http.delete(url, headers=other), 404, "not_found")
    admin = bearer(srv.token("admin", tenant))
    unknown = "/api/v1/agents/agt_000000000000000000000000/deploy"
    assert_envelope(await http.post(unknown, headers=admin), 404, "not_found")
    assert_envelope(await http.post("/api/v1/agents/nope/deploy", headers=admin), 404, "not_found")
    missing = await http.post(url, json={"version": 7}, headers=admin)
    assert "no version 7" in assert_envelope(missing, 400, "bad_request")["message"]
    _ok(await http.post(f"/api/v1/agents/{agent['id']}/disable", headers=admin))
    refused = assert_envelope(await http.post(url, headers=admin), 409, "agent_disabled")
    assert "disabled" in refused["message"]
    shown = _ok(await http.get(f"/api/v1/agents/{agent['id']}", headers=viewer))
    assert shown["status"] == "disabled" and shown["deployment"] is None


async def _placement(srv: RunningServer, agent_id: str) -> dict[str, Any] | None:
    kv = await _on_server(srv, srv.ctx.store.get(f"agents/{agent_id}"))
    return None if kv is None else dict(json.loads(kv.value))


async def _on_server(srv: RunningServer, coro: Any) -> Any:
    """``coro`` on the server's event loop (its stores live there), awaited from here."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, srv.loop))


async def test_disable_withdraws_the_replicas_and_enable_then_deploy_brings_them_back(
    srv: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    await nodes.register(unique("n"))
    tenant, agent = await _agent(srv, http)
    operator = bearer(srv.token("operator", tenant))
    url = f"/api/v1/agents/{agent['id']}"
    _ok(await http.post(f"{url}/deploy", headers=operator))
    await _placed(http, operator, agent["id"], 1)
    assert await _placement(srv, agent["id"]) is not None

    disabled = _ok(await http.post(f"{url}/disable", headers=operator))
    assert disabled["status"] == "disabled" and disabled["deployment"] is None
    assert await _placement(srv, agent["id"]) is None
    enabled = _ok(await http.post(f"{url}/enable", headers=operator))
    assert enabled["status"] == "created" and enabled["deployment"] is None
    _ok(await http.post(f"{url}/deploy", headers=operator))
    back = await _placed(http, operator, agent["id"], 1)
    assert back["status"] == "deployed"
    # enabling a deployed agent changes nothing
    assert _ok(await http.post(f"{url}/enable", headers=operator))["status"] == "deployed"

    undeployed = _ok(await http.delete(f"{url}/deploy", headers=operator))
    assert undeployed["status"] == "created" and undeployed["deployment"] is None
    assert await _placement(srv, agent["id"]) is None
    events = await audit_events(http, srv.token("admin", tenant), action="agent.undeploy")
    assert len(events) == 1


async def test_only_a_node_with_a_placement_claims_the_agent_s_queue(
    srv: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    tenant, agent = await _agent(srv, http)
    operator = bearer(srv.token("operator", tenant))
    _ok(await http.post(f"/api/v1/agents/{agent['id']}/deploy", headers=operator))
    placed = await _placed(http, operator, agent["id"], 1)
    (holder,) = placed["deployment"]["nodes"]
    other = await nodes.register(unique("n"))
    placement = await _placement(srv, agent["id"])
    assert placement is not None and placement["tenant"] == tenant  # the routers' name
    tenant_row = await _on_server(srv, srv.ctx.records.ensure_tenant(tenant))
    # straight into the queue (the agent:run type is not this test's to submit)
    task = NewTask(type="job:run", queue=f"agent.{agent['id']}")
    made = await _on_server(srv, srv.ctx.queue.submit(tenant_row.id, task))

    claimed = await nodes.api.client(other).claim_task(other, ["process"], ["default"], 1.5)
    assert claimed is None  # a node without a placement never sees the agent's queue
    got = await nodes.api.client(holder).claim_task(holder, ["process"], ["default"], 5.0)
    assert got is not None and got.id == made.id and got.queue == f"agent.{agent['id']}"


async def test_a_drained_or_lost_node_s_replica_moves(
    srv: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    await nodes.register(unique("n"))
    await nodes.register(unique("n"))
    tenant, agent = await _agent(srv, http)
    operator = bearer(srv.token("operator", tenant))
    _ok(await http.post(f"/api/v1/agents/{agent['id']}/deploy", headers=operator))
    (first,) = (await _placed(http, operator, agent["id"], 1))["deployment"]["nodes"]

    await nodes.admin.drain(first)

    async def moved_from(node: str) -> str | None:
        got = _ok(await http.get(f"/api/v1/agents/{agent['id']}", headers=operator))
        now = got["deployment"]["nodes"]
        return now[0] if now and now != [node] else None

    second = await eventually(lambda: moved_from(first), "the replica to leave the drained node")
    decisions = _ok(await http.get("/api/v1/decisions", params={"kind": "agent"}, headers=operator))
    move = decisions[0]
    assert move["action"] == {"agent": agent["id"], "change": "move", "from": first, "to": second}
    assert move["reason"] == f"node {first} is draining" and move["outcome"] == "applied"

    await _on_server(srv, srv.ctx.store.delete(f"nodes/{second}"))  # its lease is gone
    third = await eventually(lambda: moved_from(second), "the replica to leave the lost node")
    assert third not in (first, second)
    decisions = _ok(await http.get("/api/v1/decisions", params={"kind": "agent"}, headers=operator))
    assert decisions[0]["reason"] == f"node {second} is lost"


async def test_a_replica_moves_off_a_node_whose_risk_turns_high(
    srv: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    await nodes.register(unique("n"))
    await nodes.register(unique("n"))
    tenant, agent = await _agent(srv, http)
    operator = bearer(srv.token("operator", tenant))
    _ok(await http.post(f"/api/v1/agents/{agent['id']}/deploy", headers=operator))
    (risky,) = (await _placed(http, operator, agent["id"], 1))["deployment"]["nodes"]

    # little spare capacity left in its market: the risk engine says HIGH
    async with ApiClient(srv.base_url, srv.token("operator")) as api:
        await api.post_signals([SignalIn(node=risky, kind="capacity", value=0.05, ts=time.time())])

    async def moved() -> str | None:
        got = _ok(await http.get(f"/api/v1/agents/{agent['id']}", headers=operator))
        now = got["deployment"]["nodes"]
        return now[0] if now and now != [risky] else None

    safer = await eventually(moved, "the replica to leave the risky node", timeout=15)
    decisions = _ok(await http.get("/api/v1/decisions", params={"kind": "agent"}, headers=operator))
    assert decisions[0]["reason"] == f"node {risky} is at risk HIGH"
    assert decisions[0]["action"]["from"] == risky and decisions[0]["action"]["to"] == safer


async def test_deleting_a_tenant_drops_its_deployed_agents_placements(
    srv: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    await nodes.register(unique("n"))
    tenant, agent = await _agent(srv, http)
    operator = bearer(srv.token("operator", tenant))
    _ok(await http.post(f"/api/v1/agents/{agent['id']}/deploy", headers=operator))
    await _placed(http, operator, agent["id"], 1)
    deleted = await http.delete(f"/api/v1/tenants/{tenant}", headers=bearer(srv.admin_token))
    assert deleted.status_code == 200, deleted.text
    assert await _on_server(srv, srv.ctx.records.agent_deployment(agent["id"])) is None

    async def dropped() -> bool:
        return await _placement(srv, agent["id"]) is None

    await eventually(dropped, "the placement of the deleted tenant's agent to go")

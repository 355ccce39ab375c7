"""Every node↔server message and stored record carries its schema version: the real
writers (``ApiClient``'s node calls, the server's answers, the state store's records)
against a real server, each body seen on the wire."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aether.client import ApiClient
from aether.errors import NotFoundError
from aether.model.api import RegisterIn
from aether.model.cluster import NodeCapabilities, endpoint_key, routes_key
from aether.model.tasks import TaskCompleteIn, TaskFailIn
from aether.model.telemetry import NodeMetrics
from tests.support.api import deploy, spec_for, unique, upload_random
from tests.support.fake_nodes import FakeNodes
from tests.support.server import RunningServer, running_server
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Its own server: the nodes registered here would take other tests' instances (and
    be waited for by other tests' withdrawals). Long leases: they do not heartbeat."""
    with running_server(tmp_path_factory.mktemp("schema-versions"), lease_ttl=120.0) as running:
        yield running


class Recording(httpx.AsyncBaseTransport):
    """The ordinary transport, keeping each call's JSON request and answer bodies."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.calls: list[tuple[str, str, Any, Any]] = []  # method, path, sent, answered

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        sent = json.loads(request.content) if request.content else None
        answered = json.loads(body) if body else None
        self.calls.append((request.method, request.url.path, sent, answered))
        return httpx.Response(
            response.status_code, headers=response.headers, content=body, request=request
        )

    def call(self, method: str, path_end: str) -> tuple[Any, Any]:
        for called, path, sent, answered in self.calls:
            if called == method and path.endswith(path_end):
                return sent, answered
        raise AssertionError(f"no {method} …{path_end} in {[c[:2] for c in self.calls]}")

    async def aclose(self) -> None:
        await self.inner.aclose()


def _metrics(node: str) -> NodeMetrics:
    return NodeMetrics(
        node=node,
        ts=time.time(),
        cpu=0.1,
        memory_used_mb=1,
        memory_total_mb=2,
        disk_used_mb=1,
        disk_total_mb=2,
        net_rx_bytes=0,
        net_tx_bytes=0,
    )


async def test_a_nodes_messages_and_the_servers_answers_carry_their_versions(
    server: RunningServer,
) -> None:
    node = unique("n")
    wire = Recording()
    client = ApiClient(server.base_url, server.node_token(node), transport=wire)
    try:
        caps = NodeCapabilities(cpus=1, memory_mb=512, drivers=["process"])
        reg = await client.register(RegisterIn(id=node, capabilities=caps, router_url="http://r"))
        assert reg.schema_version == 1
        await client.heartbeat(node, reg.lease_id)
        await client.put_routes(node, reg.revision, {})
        await client.withdrawal(node, reg.revision, "http://gone", 0)
        await client.push_logs(node, [])
        await client.push_metrics(_metrics(node))
        await client.exchange_tasks(node, ["process"], ["default"], reports=[], want=0, wait=0)
        await client.unloaded(f"instances/{node}/gone@1/0")
        with pytest.raises(NotFoundError):  # no bundle waits for it, but it was sent
            await client.send_diag_part(node, "no-such-bundle", {"log.txt": "hi"})
    finally:
        await client.close()
    for method, path in [
        ("POST", "/nodes/register"),
        ("POST", "/heartbeat"),
        ("PUT", "/routes"),
        ("POST", "/logs"),
        ("POST", "/metrics"),
        ("POST", "/tasks/exchange"),
        ("POST", "/diag/no-such-bundle"),
    ]:
        sent, _ = wire.call(method, path)
        assert sent["schema"] == 1, (path, sent)
    for method, path in [
        ("POST", "/nodes/register"),
        ("POST", "/heartbeat"),
        ("PUT", "/routes"),
        ("GET", "/withdrawals"),
        ("POST", "/logs"),
        ("POST", "/tasks/exchange"),
        ("DELETE", "/gone@1/0"),
    ]:
        _, answered = wire.call(method, path)
        assert answered["schema"] == 1, (path, answered)
    _, heartbeat = wire.call("POST", "/heartbeat")
    assert set(heartbeat) >= {"ttl", "authorities"}  # what 0.1.0's nodes read, as before
    stored = server.run(server.ctx.store.get(routes_key(node)))
    assert stored is not None and json.loads(stored.value)["schema"] == 1

    stream = ApiClient(server.base_url, server.node_token(node))
    try:
        async for line in stream.assignments(node, 0):
            assert line["type"] == "snapshot" and line["schema"] == 1
            break
    finally:
        await stream.close()


async def test_the_servers_own_records_carry_their_versions(server: RunningServer) -> None:
    trust = server.run(server.ctx.store.get("trust/authorities"))
    assert trust is not None and json.loads(trust.value)["schema"] == 1
    servers, _ = server.run(server.ctx.store.range("servers/"))
    assert servers and all(json.loads(kv.value)["schema"] == 1 for kv in servers)


async def test_reports_their_answers_and_the_records_they_write_carry_their_versions(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    await nodes.register(unique("n"))
    app = unique("ver")
    digest = await upload_random(http, server.admin_token)
    response = await deploy(http, server.admin_token, app, digest, instances=1, spec=spec_for(app))
    assert response.status_code == 201, response.text

    async def placed() -> list[dict[str, Any]]:
        return await nodes.instances(app)

    (inst,) = await eventually(placed, "a placement")
    node = inst["key"].split("/")[1]
    wire = Recording()  # this node's reports go through the recording transport
    nodes.api.clients[node] = ApiClient(server.base_url, server.node_token(node), transport=wire)
    await nodes.bring_up(inst["key"])

    sent, answered = wire.call("PUT", f"/instances/{app}@1/{inst['n']}")
    assert sent["schema"] == 1 and answered["schema"] == 1
    assert await nodes.api.clients[node].instance_secrets(inst["key"]) == {"env": {}, "files": {}}
    _, answered = wire.call("GET", f"/instances/{app}@1/{inst['n']}/secrets")
    assert answered["schema"] == 1
    records = {
        "instance": await nodes.record(inst["key"]),
        "blueprint": await nodes.record(f"blueprints/{app}"),
        "node": await nodes.record(f"nodes/{node}"),
    }
    for name, record in records.items():
        assert record["schema"] == 1, (name, record)
    endpoint = await nodes.record(endpoint_key(app, "web", node, inst["n"]))
    # its "schema" is a slice entry's description (None here), read so by 0.1.0's nodes
    assert endpoint["schema_version"] == 1 and endpoint["schema"] is None


async def test_a_message_from_a_newer_node_is_refused_with_the_policy(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    node = unique("n")
    headers = {"Authorization": f"Bearer {server.node_token(node)}"}
    caps = {"cpus": 1, "memory_mb": 512, "drivers": ["process"]}
    body = {"id": node, "capabilities": caps, "router_url": "http://r"}
    newer = await http.post("/api/v1/nodes/register", json={**body, "schema": 2}, headers=headers)
    assert newer.status_code == 400, newer.text
    assert newer.json()["code"] == "bad_request"
    assert (
        "register schema 2 is newer than this version's 1: upgrade the servers first"
        in (newer.json()["message"])
    )
    older = await http.post("/api/v1/nodes/register", json=body, headers=headers)  # 0.1.0's
    assert older.status_code == 200, older.text
    assert older.json()["schema"] == 1


def _created(payload: dict[str, Any]) -> dict[str, Any]:
    """A ``vm:create`` task's result."""
    vm = {"vm_id": payload["vm_id"], "name": payload["name"], "status": "running"}
    return {**vm, "driver": "bwrap", "isolated": True}


async def test_a_nodes_task_calls_and_their_answers_carry_their_versions(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    node, queue = unique("n"), unique("q")
    for name in ("a", "b"):
        made = await http.post(
            "/api/v1/tasks",
            json={"type": "vm:create", "payload": {"name": name}, "queue": queue},
            headers={"Authorization": f"Bearer {server.admin_token}"},
        )
        assert made.status_code == 201, made.text
        assert made.json()["schema"] == 1  # the task API's TaskOut too (an added field)
    wire = Recording()
    client = ApiClient(server.base_url, server.node_token(node), transport=wire)
    try:
        first = await client.claim_task(node, ["bwrap", "process"], [queue], 0)
        assert first is not None and first.schema_version == 1
        assert await client.task_heartbeat(first.id, node, attempt=1)
        second = await client.claim_task(node, ["bwrap", "process"], [queue], 0)
        assert second is not None
        failed = await client.request(  # what 0.1.0's nodes send (this one uses exchange)
            "POST",
            f"/api/v1/tasks/{second.id}/fail",
            json=TaskFailIn(node=node, attempt=1, error="boom").model_dump(mode="json"),
        )
        assert failed.json()["schema"] == 1
        done = await client.request(
            "POST",
            f"/api/v1/tasks/{first.id}/complete",
            json=TaskCompleteIn(node=node, attempt=1, result=_created(first.payload)).model_dump(
                mode="json"
            ),
        )
        assert done.json()["schema"] == 1 and done.json()["state"] == "succeeded"
    finally:
        await client.close()
    for method, path in [("POST", "/tasks/claim"), ("POST", "/heartbeat")]:
        sent, answered = wire.call(method, path)
        assert sent["schema"] == 1 and answered["schema"] == 1, (path, sent, answered)
    sent, _ = wire.call("POST", "/fail")
    assert sent["schema"] == 1
    sent, _ = wire.call("POST", "/complete")
    assert sent["schema"] == 1

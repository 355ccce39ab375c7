"""Nodes are not tenants (issue 11): every node route takes only the node's own credential.

A tenant admin (of the default tenant or another), a join token, and another node's
credential are refused on every node route (403, the envelope, an audit line); no
token is 401; the node's own credential passes. A node acts only on what is
assigned to it; a revoked node's next call is 401 and it may not join again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from aether.client import ApiClient
from aether.core.lifecycle import Command
from aether.model.app import AppSpec
from aether.model.cluster import InstanceRecord, instance_key
from aether.node.logship import LogShipper
from tests.support.api import (
    DIGEST_HEADER,
    assert_envelope,
    bearer,
    join_body,
    sha256_of,
    unique,
    upload_random,
)
from tests.support.server import RunningServer

CAPS = {"cpus": 1, "memory_mb": 512, "drivers": ["process"]}


@dataclass
class Setup:
    mine: str  # the node whose routes are called
    theirs: str  # another node, with a credential of its own
    task: str  # a task claimed by ``mine`` (attempt 1)
    digest: str  # an artifact an instance on ``mine`` runs
    app: str
    tenant_id: str


def _sync(server: RunningServer, method: str, path: str, token: str, **kw: Any) -> httpx.Response:
    headers = {**kw.pop("headers", {}), **bearer(token)}
    return httpx.request(method, f"{server.base_url}{path}", headers=headers, timeout=10, **kw)


def _register(server: RunningServer, node: str) -> None:
    body = {"id": node, "capabilities": CAPS, "router_url": "http://127.0.0.1:9"}
    response = _sync(server, "POST", "/api/v1/nodes/register", server.node_token(node), json=body)
    assert response.status_code == 200, response.text


def _assign(server: RunningServer, node: str, app: str, digest: str, tenant_id: str) -> str:
    """An instance of ``app`` on ``node``, written straight into the state store."""
    record = InstanceRecord(
        app=app,
        version=1,
        n=0,
        node=node,
        tenant=tenant_id,
        deployment_id="d",
        digest=digest,
        spec=AppSpec(name=app, start="sleep 1"),
        command=Command.LOAD,
    )
    key = instance_key(node, app, 1, 0)
    server.run(server.ctx.store.put(key, record.model_dump_json().encode()))
    return key


def _claimed_task(server: RunningServer, node: str) -> dict[str, Any]:
    queue = unique("q")
    submitted = _sync(
        server,
        "POST",
        "/api/v1/tasks",
        server.admin_token,
        json={"type": "vm:create", "payload": {"name": "box"}, "queue": queue},
    )
    assert submitted.status_code == 201, submitted.text
    claimed = _sync(
        server,
        "POST",
        "/api/v1/tasks/claim",
        server.node_token(node),
        json={"node": node, "drivers": ["process"], "queues": [queue], "wait": 0},
    )
    assert claimed.status_code == 200, claimed.text
    task: dict[str, Any] = claimed.json()
    assert task["attempts"] == 1
    return task


@pytest.fixture(scope="module")
def setup(server: RunningServer) -> Setup:
    mine, theirs = unique("mine"), unique("theirs")
    for node in (mine, theirs):
        _register(server, node)
    app = unique("assigned")
    data = app.encode() * 8
    uploaded = _sync(
        server,
        "POST",
        "/api/v1/artifacts",
        server.admin_token,
        content=data,
        headers={DIGEST_HEADER: sha256_of(data)},
    )
    assert uploaded.status_code == 201, uploaded.text
    tenant_id = server.run(server.ctx.records.ensure_tenant()).id
    task = _claimed_task(server, mine)
    return Setup(mine, theirs, task["id"], sha256_of(data), app, tenant_id)


@pytest.fixture(autouse=True)
def live(request: pytest.FixtureRequest, server: RunningServer) -> None:
    """Before each test that uses ``setup``: ``mine`` is live (a fresh lease) and runs an
    instance of the app (the leader deletes a lost node's instances once its lease ends)."""
    if "setup" not in request.fixturenames:
        return
    setup: Setup = request.getfixturevalue("setup")
    _register(server, setup.mine)
    _assign(server, setup.mine, setup.app, setup.digest, setup.tenant_id)


Route = tuple[str, Callable[[Setup], str], Callable[[Setup], dict[str, Any]]]

# every node route: method, path, request keyword arguments
ROUTES: dict[str, Route] = {
    "register": (
        "POST",
        lambda s: "/api/v1/nodes/register",
        lambda s: {"json": {"id": s.mine, "capabilities": CAPS, "router_url": "http://x:1"}},
    ),
    "heartbeat": (
        "POST",
        lambda s: f"/api/v1/nodes/{s.mine}/heartbeat",
        lambda s: {"json": {"lease_id": 1}},
    ),
    "assignments": ("GET", lambda s: f"/api/v1/nodes/{s.mine}/assignments", lambda s: {}),
    "report": (
        "PUT",
        lambda s: f"/api/v1/nodes/{s.mine}/instances/{s.app}@1/0",
        lambda s: {"json": {"state": "LOADING"}},
    ),
    "unloaded": ("DELETE", lambda s: f"/api/v1/nodes/{s.mine}/instances/ghost@1/0", lambda s: {}),
    "routes": (
        "PUT",
        lambda s: f"/api/v1/nodes/{s.mine}/routes",
        lambda s: {"json": {"revision": 1, "in_flight": {}}},
    ),
    "withdrawals": (
        "GET",
        lambda s: f"/api/v1/nodes/{s.mine}/withdrawals",
        lambda s: {"params": {"revision": 1, "url": "http://127.0.0.1:1"}},
    ),
    "logs": (
        "POST",
        lambda s: f"/api/v1/nodes/{s.mine}/logs",
        lambda s: {
            "json": {
                "entries": [{"tenant": s.tenant_id, "app": s.app, "label": "v1/0", "text": "x"}]
            }
        },
    ),
    "metrics": (
        "POST",
        lambda s: f"/api/v1/nodes/{s.mine}/metrics",
        lambda s: {
            "json": {
                "node": s.mine,
                "ts": time.time(),
                "cpu": 0.1,
                "memory_used_mb": 1,
                "memory_total_mb": 2,
                "disk_used_mb": 1,
                "disk_total_mb": 2,
                "net_rx_bytes": 0,
                "net_tx_bytes": 0,
            }
        },
    ),
    "snapshot upload": (
        "POST",
        lambda s: "/api/v1/snapshots",
        lambda s: {
            "content": b"snap",
            "headers": {
                DIGEST_HEADER: sha256_of(b"snap"),
                "X-Aether-Instance": instance_key(s.mine, s.app, 1, 0),
            },
        },
    ),
    "task claim": (
        "POST",
        lambda s: "/api/v1/tasks/claim",
        lambda s: {"json": {"node": s.mine, "queues": [unique("empty")], "wait": 0}},
    ),
    "task heartbeat": (
        "POST",
        lambda s: f"/api/v1/tasks/{s.task}/heartbeat",
        lambda s: {"json": {"node": s.mine, "attempt": 1}},
    ),
    "task complete": (
        "POST",
        lambda s: f"/api/v1/tasks/{s.task}/complete",
        lambda s: {"json": {"node": s.mine, "attempt": 1, "result": {"vm_id": "forged"}}},
    ),
    "task fail": (
        "POST",
        lambda s: f"/api/v1/tasks/{s.task}/fail",
        lambda s: {"json": {"node": s.mine, "attempt": 1, "error": "forged"}},
    ),
}


async def _call(
    http: httpx.AsyncClient, setup: Setup, route: str, token: str | None
) -> httpx.Response:
    method, path, kwargs = ROUTES[route]
    args = kwargs(setup)
    headers = {**args.pop("headers", {}), **(bearer(token) if token else {})}
    return await http.request(method, path(setup), headers=headers, **args)


CALLERS = ["default admin", "other tenant's admin", "join token", "another node"]


def _token(server: RunningServer, setup: Setup, caller: str) -> str:
    if caller == "default admin":
        return server.admin_token
    if caller == "other tenant's admin":
        return server.token("admin", "node-auth-tenant")
    if caller == "join token":
        return server.join_token
    return server.node_token(setup.theirs)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_a_node_route_refuses_every_caller_but_the_node(
    server: RunningServer,
    http: httpx.AsyncClient,
    setup: Setup,
    route: str,
    caller: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = _token(server, setup, caller)
    with caplog.at_level(logging.WARNING, logger="aether.audit"):
        assert_envelope(await _call(http, setup, route, token), 403, "forbidden")
    audits = [r for r in caplog.records if r.name == "aether.audit"]
    assert audits, "a refusal writes an audit line"
    line = audits[-1]
    assert line.audit["path"] == ROUTES[route][1](setup)  # type: ignore[attr-defined]
    assert token not in line.getMessage()  # never a secret


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_a_node_route_without_a_token_is_401(
    http: httpx.AsyncClient, setup: Setup, route: str
) -> None:
    assert_envelope(await _call(http, setup, route, None), 401, "unauthorized")


@pytest.mark.parametrize(
    "route", sorted(set(ROUTES) - {"task complete", "task fail", "assignments"})
)
async def test_the_nodes_own_credential_passes(
    server: RunningServer, http: httpx.AsyncClient, setup: Setup, route: str
) -> None:
    response = await _call(http, setup, route, server.node_token(setup.mine))
    assert response.status_code not in (401, 403), response.text


async def test_the_node_follows_its_own_assignments(
    server: RunningServer, http: httpx.AsyncClient, setup: Setup
) -> None:
    path = f"/api/v1/nodes/{setup.mine}/assignments"
    async with http.stream("GET", path, headers=bearer(server.node_token(setup.mine))) as stream:
        assert stream.status_code == 200
        async for line in stream.aiter_lines():
            assert setup.app in line  # the snapshot: its own instance
            break


async def test_the_join_token_only_joins(server: RunningServer, http: httpx.AsyncClient) -> None:
    node = unique("joiner")
    joined = await http.post(
        "/api/v1/nodes/join", json=join_body(node), headers=bearer(server.join_token)
    )
    assert joined.status_code == 201, joined.text
    assert joined.json()["node_id"] == node
    credential = joined.json()["credential"]
    for token in (server.admin_token, server.new_tenant(), credential):
        assert_envelope(
            await http.post("/api/v1/nodes/join", json=join_body(node), headers=bearer(token)),
            403,
            "forbidden",
        )
    # joining again replaces the credential: the first one stops at once
    again = await http.post(
        "/api/v1/nodes/join", json=join_body(node), headers=bearer(server.join_token)
    )
    assert again.status_code == 201
    beat = await http.post(
        f"/api/v1/nodes/{node}/heartbeat", json={"lease_id": 1}, headers=bearer(credential)
    )
    assert_envelope(beat, 401, "unauthorized")
    bad = await http.post(
        "/api/v1/nodes/join", json=join_body("../etc"), headers=bearer(server.join_token)
    )
    assert_envelope(bad, 400, "bad_request")


async def test_only_the_cluster_admin_mints_join_tokens_and_nobody_node_tokens(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    other = bearer(server.new_tenant())
    for role in ("join", "node"):
        refused = await http.post("/api/v1/tokens", json={"role": role, "name": "n"}, headers=other)
        assert refused.status_code in (400, 403), refused.text
        assert_envelope(refused, refused.status_code, refused.json()["code"])
    node_token = await http.post(
        "/api/v1/tokens", json={"role": "node", "name": "n"}, headers=bearer(server.admin_token)
    )
    assert_envelope(node_token, 400, "bad_request")
    minted = await http.post(
        "/api/v1/tokens", json={"role": "join", "name": "n"}, headers=bearer(server.admin_token)
    )
    assert minted.status_code == 201, minted.text
    assert minted.json()["role"] == "join"
    joined = await http.post(
        "/api/v1/nodes/join", json=join_body(unique("n")), headers=bearer(minted.json()["token"])
    )
    assert joined.status_code == 201


async def test_a_revoked_node_is_cut_off_and_may_not_join_until_allowed(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    node = unique("revoked")
    credential = server.node_token(node)
    _register(server, node)
    # cached by a first call, then revoked: the next call is 401 all the same
    metrics = ROUTES["metrics"][2](Setup(node, "", "", "", "", ""))["json"]
    pushed = await http.post(
        f"/api/v1/nodes/{node}/metrics", json=metrics, headers=bearer(credential)
    )
    assert pushed.status_code == 204
    assert_envelope(
        await http.post(f"/api/v1/nodes/{node}/revoke", headers=bearer(server.new_tenant())),
        403,
        "forbidden",
    )
    revoked = await http.post(f"/api/v1/nodes/{node}/revoke", headers=bearer(server.admin_token))
    assert revoked.json() == {"node": node, "revoked": True, "credentials": 1}
    assert_envelope(
        await http.post(f"/api/v1/nodes/{node}/metrics", json=metrics, headers=bearer(credential)),
        401,
        "unauthorized",
    )
    nodes = (await http.get("/api/v1/nodes", headers=bearer(server.admin_token))).json()
    assert {n["id"]: n["state"] for n in nodes}[node] == "revoked"
    rejoin = await http.post(
        "/api/v1/nodes/join", json=join_body(node), headers=bearer(server.join_token)
    )
    assert "aether nodes allow" in assert_envelope(rejoin, 403, "node_revoked")["message"]
    # a single-use token a revoked node tried keeps its use (was: spent on the refusal)
    once = await http.post(
        "/api/v1/tokens",
        json={"role": "join", "name": "one node", "uses": 1},
        headers=bearer(server.admin_token),
    )
    single = once.json()["token"]
    refused = await http.post("/api/v1/nodes/join", json=join_body(node), headers=bearer(single))
    assert_envelope(refused, 403, "node_revoked")
    other = await http.post(
        "/api/v1/nodes/join", json=join_body(unique("other")), headers=bearer(single)
    )
    assert other.status_code == 201, other.text
    allowed = await http.post(f"/api/v1/nodes/{node}/allow", headers=bearer(server.admin_token))
    assert allowed.json() == {"node": node, "revoked": False}
    rejoin = await http.post(
        "/api/v1/nodes/join", json=join_body(node), headers=bearer(server.join_token)
    )
    assert rejoin.status_code == 201
    assert_envelope(
        await http.post(
            f"/api/v1/nodes/{unique('never')}/revoke", headers=bearer(server.admin_token)
        ),
        404,
        "not_found",
    )


async def test_a_partial_result_is_400_and_changes_nothing(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    node = unique("partial")
    task = _claimed_task(server, node)
    credential = bearer(server.node_token(node))
    for result in ({}, {"status": "running"}, {"vm_id": "vm-someone-elses"}):
        response = await http.post(
            f"/api/v1/tasks/{task['id']}/complete",
            json={"node": node, "attempt": 1, "result": result},
            headers=credential,
        )
        assert_envelope(response, 400, "bad_request")
    missing = await http.post(
        f"/api/v1/tasks/{task['id']}/complete", json={"node": node}, headers=credential
    )
    assert_envelope(missing, 400, "bad_request")
    after = await http.get(f"/api/v1/tasks/{task['id']}", headers=bearer(server.admin_token))
    assert after.json()["state"] == "active" and after.json()["result"] is None


async def test_only_the_holder_of_the_attempt_completes_or_fails(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    node, other = unique("holder"), unique("other")
    task = _claimed_task(server, node)
    result = {"vm_id": task["payload"]["vm_id"], "driver": "process", "isolated": False}
    path = f"/api/v1/tasks/{task['id']}"
    for token, body in (
        (server.node_token(other), {"node": other, "attempt": 1}),
        (server.node_token(other), {"node": node, "attempt": 1}),
        (server.node_token(node), {"node": node, "attempt": 2}),
    ):
        for verb, extra in (("complete", {"result": result}), ("fail", {"error": "x"})):
            response = await http.post(
                f"{path}/{verb}", json={**body, **extra}, headers=bearer(token)
            )
            assert_envelope(response, 403, "forbidden")
        beat = await http.post(f"{path}/heartbeat", json=body, headers=bearer(token))
        assert_envelope(beat, 403, "forbidden")
    admin = bearer(server.admin_token)
    unchanged = (await http.get(path, headers=admin)).json()
    assert (unchanged["state"], unchanged["result"], unchanged["error"]) == ("active", None, None)
    sandbox = (await http.get(f"/api/v1/sandboxes/{result['vm_id']}", headers=admin)).json()
    assert sandbox["status"] == "creating"
    done = await http.post(
        f"{path}/complete",
        json={"node": node, "attempt": 1, "result": result},
        headers=bearer(server.node_token(node)),
    )
    assert done.json()["state"] == "succeeded"


async def test_a_node_reads_only_what_is_assigned_to_it(
    server: RunningServer, http: httpx.AsyncClient, setup: Setup
) -> None:
    path = f"/api/v1/artifacts/{setup.digest}"
    mine, theirs = bearer(server.node_token(setup.mine)), bearer(server.node_token(setup.theirs))
    assert (await http.get(path, headers=mine)).status_code == 200
    assert (await http.head(path, headers=mine)).status_code == 200
    assert_envelope(await http.get(path, headers=theirs), 403, "forbidden")
    assert (await http.head(path, headers=theirs)).status_code == 403
    # a task the node holds names what it needs: only that node gets it
    digest = await upload_random(http, server.admin_token)
    app = unique("job")
    deployed = await http.post(
        f"/api/v1/apps/{app}/deployments",
        json={"digest": digest, "spec": {"name": app, "start": "sleep 1"}, "instances": 0},
        headers=bearer(server.admin_token),
    )
    assert deployed.status_code == 201, deployed.text
    queue = unique("jobs")
    job = await http.post(
        "/api/v1/tasks",
        json={"type": "job:run", "payload": {"app": app, "command": "true"}, "queue": queue},
        headers=bearer(server.admin_token),
    )
    assert job.status_code == 201, job.text
    claimed = await http.post(
        "/api/v1/tasks/claim",
        json={"node": setup.mine, "queues": [queue], "wait": 0},
        headers=mine,
    )
    assert claimed.json()["id"] == job.json()["id"]
    named = {"X-Aether-Task": job.json()["id"]}
    got = await http.get(f"/api/v1/artifacts/{digest}", headers={**mine, **named})
    assert got.status_code == 200
    refused = await http.get(f"/api/v1/artifacts/{digest}", headers={**theirs, **named})
    assert_envelope(refused, 403, "forbidden")
    assert_envelope(await http.get(f"/api/v1/artifacts/{digest}", headers=mine), 403, "forbidden")


async def test_a_node_ships_logs_and_metrics_of_its_own_instances_only(
    server: RunningServer, http: httpx.AsyncClient, setup: Setup
) -> None:
    mine = bearer(server.node_token(setup.mine))
    entry = {"tenant": setup.tenant_id, "app": setup.app, "label": "v1/0", "text": "ok"}
    ok = await http.post(
        f"/api/v1/nodes/{setup.mine}/logs", json={"entries": [entry]}, headers=mine
    )
    assert ok.json() == {"schema": 1, "accepted": 1}
    foreign = {**entry, "app": unique("not-here")}
    refused = await http.post(
        f"/api/v1/nodes/{setup.mine}/logs", json={"entries": [entry, foreign]}, headers=mine
    )
    assert_envelope(refused, 403, "forbidden")
    body = ROUTES["metrics"][2](setup)["json"]
    body["instances"] = [
        {
            "key": instance_key(setup.theirs, setup.app, 1, 0),
            "app": setup.app,
            "version": 1,
            "n": 0,
            "cpu": 0.1,
            "rss_mb": 1,
        }
    ]
    pushed = await http.post(f"/api/v1/nodes/{setup.mine}/metrics", json=body, headers=mine)
    assert_envelope(pushed, 403, "forbidden")


@dataclass
class _Output:
    """What the log shipper reads of an instance runner: its log and its record."""

    log_path: Path
    record: InstanceRecord


async def test_a_refused_app_does_not_hold_back_the_other_apps_logs(
    server: RunningServer, http: httpx.AsyncClient, setup: Setup, tmp_path: Path
) -> None:
    """Was a bug: one push carried every app's lines, and when the server refused one
    app (its failed instance already replaced by the leader) the node resent the same
    push forever: no app on the node shipped a line again."""
    kv = server.run(server.ctx.store.get(instance_key(setup.mine, setup.app, 1, 0)))
    assert kv is not None
    runs = InstanceRecord.model_validate_json(kv.value)
    gone = runs.model_copy(update={"app": unique("replaced")})
    outputs = {
        "runs": _Output(tmp_path / "runs.log", runs),
        "gone": _Output(tmp_path / "gone.log", gone),
    }
    outputs["runs"].log_path.write_text("first line\n")
    outputs["gone"].log_path.write_text("Traceback: too late\n")
    async with ApiClient(server.base_url, server.node_token(setup.mine)) as client:
        shipper = LogShipper(client, setup.mine, cast(Any, outputs))

        assert await shipper.ship()  # one push refused: each app is sent on its own
        with outputs["runs"].log_path.open("a") as fh:
            fh.write("second line\n")
        await shipper.flush(cast(Any, outputs["runs"]))
        assert not await shipper.ship()  # nothing left: the refused lines were dropped

    stored, _ = server.ctx.logs.tail(setup.tenant_id, setup.app, 1000)
    lines = [line for line in stored if f"@{setup.mine}]" in line]
    assert lines[-2:] == [f"[v1/0@{setup.mine}] first line", f"[v1/0@{setup.mine}] second line"]
    assert not server.ctx.logs.path(setup.tenant_id, gone.app).exists()


async def test_a_node_signals_only_about_itself(
    server: RunningServer, http: httpx.AsyncClient, setup: Setup
) -> None:
    mine = bearer(server.node_token(setup.mine))
    own = {"node": setup.mine, "kind": "rebalance", "value": 1}
    assert (await http.post("/api/v1/signals", json=own, headers=mine)).status_code == 201
    other = {**own, "node": setup.theirs}
    assert_envelope(await http.post("/api/v1/signals", json=other, headers=mine), 403, "forbidden")
    market = {"node": setup.theirs, "rebalance": True}
    assert_envelope(
        await http.post("/api/v1/market/signal", json=market, headers=mine), 403, "forbidden"
    )

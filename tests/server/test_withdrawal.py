"""The graceful drain's confirmation: the rule (``core.withdrawal``) and its routes.

A stopping instance's DEACTIVATING report withdraws its endpoint and answers
the revision; the instance stops once every live router applied that revision
and has no request open to it (``GET /nodes/{id}/withdrawals``).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from aether.core.lifecycle import Command, State
from aether.core.withdrawal import RouterState, waiting_for
from aether.model.app import AppSpec
from aether.model.cluster import Endpoint, InstanceRecord, endpoint_key, instance_key
from aether.store.base import Put
from tests.support.api import bearer, unique
from tests.support.server import RunningServer

URL = "http://127.0.0.1:7001"
CAPS = {"cpus": 1, "memory_mb": 512, "drivers": ["process"]}


# -- the rule ---------------------------------------------------------------------------


def test_every_live_router_must_have_applied_the_revision() -> None:
    routers = {"a": RouterState(10), "b": RouterState(9)}
    assert waiting_for({"a", "b"}, routers, 10, URL) == {
        "b": "its router applied revision 9, not yet 10"
    }
    assert waiting_for({"a", "b"}, {**routers, "b": RouterState(11)}, 10, URL) == {}


def test_a_router_with_requests_open_to_the_endpoint_is_waited_for() -> None:
    routers = {"a": RouterState(12, {URL: 2, "http://other": 5})}
    assert waiting_for({"a"}, routers, 10, URL) == {"a": "2 requests in flight"}
    assert waiting_for({"a"}, {"a": RouterState(12, {"http://other": 5})}, 10, URL) == {}


def test_a_silent_live_node_is_waited_for_and_a_lost_one_is_not() -> None:
    assert waiting_for({"a"}, {}, 10, URL) == {"a": "its router has not reported yet"}
    # "b" lost its lease: whatever it said last no longer matters
    assert waiting_for({"a"}, {"a": RouterState(10), "b": RouterState(1, {URL: 3})}, 10, URL) == {}


# -- the routes ---------------------------------------------------------------------------


def _call(server: RunningServer, method: str, path: str, node: str, **kw: Any) -> httpx.Response:
    return httpx.request(
        method,
        f"{server.base_url}{path}",
        headers=bearer(server.node_token(node)),
        timeout=30,
        **kw,
    )


def _register(server: RunningServer, node: str) -> None:
    body = {"id": node, "capabilities": CAPS, "router_url": "http://127.0.0.1:9"}
    assert _call(server, "POST", "/api/v1/nodes/register", node, json=body).status_code == 200


def _active_instance(server: RunningServer, node: str, app: str) -> None:
    """An ACTIVE instance of ``app`` on ``node`` told to DEACTIVATE, its endpoint published
    on the node's lease (as the leader and the node leave them; the leader leaves it so)."""
    record = InstanceRecord(
        app=app,
        version=1,
        n=0,
        node=node,
        tenant=server.run(server.ctx.records.ensure_tenant()).id,
        deployment_id="d",
        digest="sha256:" + "0" * 64,
        spec=AppSpec(name=app, start="sleep 1"),
        command=Command.DEACTIVATE,
        state=State.ACTIVE,
        url=URL,
    )
    node_kv = server.run(server.ctx.store.get(f"nodes/{node}"))
    assert node_kv is not None
    endpoint = Endpoint(app=app, node=node, n=0, version=1, url=URL)
    server.run(
        server.ctx.store.txn(
            [],
            [
                Put(instance_key(node, app, 1, 0), record.model_dump_json().encode()),
                Put(
                    endpoint_key(app, "web", node, 0),
                    endpoint.model_dump_json().encode(),
                    lease=node_kv.lease,
                ),
            ],
        )
    )


def test_deactivating_withdraws_the_endpoint_and_waits_for_every_router(
    server: RunningServer,
) -> None:
    mine, theirs, app = unique("drainer"), unique("peer"), unique("slow")
    _register(server, mine)
    _register(server, theirs)
    _active_instance(server, mine, app)
    assert server.run(server.ctx.store.get(endpoint_key(app, "web", mine, 0))) is not None

    path = f"/api/v1/nodes/{mine}/instances/{app}@1/0"
    answer = _call(server, "PUT", path, mine, json={"state": "DEACTIVATING"}).json()
    revision = answer["withdrawn_revision"]
    assert isinstance(revision, int) and revision == answer["revision"]
    assert server.run(server.ctx.store.get(endpoint_key(app, "web", mine, 0))) is None

    def ask(wait: float = 0) -> dict[str, Any]:
        params = {"revision": revision, "url": URL, "wait": wait}
        response = _call(server, "GET", f"/api/v1/nodes/{mine}/withdrawals", mine, params=params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    routes = "/api/v1/nodes/{}/routes"
    _call(server, "PUT", routes.format(mine), mine, json={"revision": revision})
    first = ask()
    assert first["confirmed"] is False
    assert first["waiting_for"] == {theirs: "its router has not reported yet"}

    _call(
        server,
        "PUT",
        routes.format(theirs),
        theirs,
        json={"revision": revision, "in_flight": {URL: 1}},
    )
    assert ask()["waiting_for"] == {theirs: "1 request in flight"}

    started = time.monotonic()
    assert ask(wait=0.3)["confirmed"] is False
    assert time.monotonic() - started >= 0.3  # it waited before it said no

    _call(
        server, "PUT", routes.format(theirs), theirs, json={"revision": revision, "in_flight": {}}
    )
    assert ask() == {"schema": 1, "confirmed": True, "revision": revision, "waiting_for": {}}


def test_a_report_that_withdraws_nothing_says_so(server: RunningServer) -> None:
    node, app = unique("plain"), unique("idle")
    _register(server, node)
    _active_instance(server, node, app)
    path = f"/api/v1/nodes/{node}/instances/{app}@1/0"
    assert _call(server, "PUT", path, node, json={"state": "DEACTIVATING"}).status_code == 200
    # LOADED after DEACTIVATING: the endpoint is already gone, nothing to wait for
    loaded = _call(server, "PUT", path, node, json={"state": "LOADED"}).json()
    assert loaded["withdrawn_revision"] is None

"""A slice instance's reports: one endpoint per entry point while ACTIVE, all of them
withdrawn when it leaves ACTIVE (and the drain's revision says so), none left behind
when it is unloaded."""

from __future__ import annotations

import json
from typing import Any

import httpx

from aether.core.lifecycle import Command, State
from aether.model.app import AppSpec
from aether.model.cluster import (
    Endpoint,
    InstanceRecord,
    endpoint_key,
    instance_endpoint_keys,
    instance_key,
)
from aether.store.base import Put
from tests.support.api import bearer, deploy, spec_for, unique, upload_random
from tests.support.fake_nodes import FakeNodes
from tests.support.server import RunningServer
from tests.support.waiting import eventually

URL = "http://127.0.0.1:7002"
CAPS = {"cpus": 1, "memory_mb": 512, "drivers": ["process"]}
ENTRIES = {
    "price": {"params": {"type": "object"}, "returns": {}, "idempotent": True, "batch": None},
    "score": {
        "params": {"type": "object"},
        "returns": {},
        "idempotent": False,
        "batch": {"max_size": 32, "max_wait_ms": 5},
    },
}


def _call(server: RunningServer, method: str, path: str, node: str, **kw: Any) -> httpx.Response:
    return httpx.request(
        method,
        f"{server.base_url}{path}",
        headers=bearer(server.node_token(node)),
        timeout=30,
        **kw,
    )


def _slice_instance(server: RunningServer, node: str, app: str, command: Command) -> None:
    body = {"id": node, "capabilities": CAPS, "router_url": "http://127.0.0.1:9"}
    assert _call(server, "POST", "/api/v1/nodes/register", node, json=body).status_code == 200
    record = InstanceRecord(
        app=app,
        version=1,
        n=0,
        node=node,
        tenant=server.run(server.ctx.records.ensure_tenant()).id,
        deployment_id="d",
        digest="sha256:" + "0" * 64,
        spec=AppSpec(name=app, start="python3 -m aether.slices.host", runtime="slice", slice="m:S"),
        command=command,
        state=State.ACTIVATING,
    )
    key = instance_key(node, app, 1, 0)
    server.run(server.ctx.store.txn([], [Put(key, record.model_dump_json().encode())]))


def _endpoints(server: RunningServer, app: str) -> dict[str, dict[str, Any]]:
    kvs, _ = server.run(server.ctx.store.range(f"endpoints/{app}/"))
    return {kv.key: json.loads(kv.value) for kv in kvs}


async def test_an_active_slice_has_one_endpoint_per_entry_and_leaving_active_withdraws_all(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    app = unique("catalog")
    digest = await upload_random(http, server.admin_token)
    spec = spec_for(app, runtime="slice", slice="shop.catalog:Catalog")
    response = await deploy(http, server.admin_token, app, digest, instances=1, spec=spec)
    assert response.status_code == 201, response.text
    await nodes.register(unique("slicer"))
    (inst,) = await eventually(lambda: nodes.instances(app), "a placement")
    key, node = inst["key"], inst["node"]
    await nodes.api.report(key, "LOADING")
    await nodes.api.report(key, "LOADED")
    await eventually(lambda: _command_is(nodes, key, "ACTIVATE"), "the leader to ACTIVATE it")
    await nodes.api.report(key, "ACTIVATING")
    await nodes.api.report(key, "ACTIVE", url=URL, entries=ENTRIES)

    eps = _endpoints(server, app)
    assert sorted(eps) == [endpoint_key(app, "price", node, 0), endpoint_key(app, "score", node, 0)]
    price = eps[endpoint_key(app, "price", node, 0)]
    assert price["entry"] == "price" and price["url"] == URL
    assert price["schema"] == ENTRIES["price"]  # the API shows entries without a call
    node_kv = server.run(server.ctx.store.get(f"nodes/{node}"))
    assert node_kv is not None
    kv = server.run(server.ctx.store.get(endpoint_key(app, "score", node, 0)))
    assert kv is not None and kv.lease == node_kv.lease  # bound to the node's lease
    assert (await nodes.record(key))["entries"] == ["price", "score"]

    # a later ACTIVE report naming fewer entry points leaves no stale endpoint
    await nodes.api.report(key, "ACTIVE", url=URL, entries={"price": ENTRIES["price"]})
    assert sorted(_endpoints(server, app)) == [endpoint_key(app, "price", node, 0)]
    await nodes.api.report(key, "ACTIVE", url=URL, entries=ENTRIES)
    assert len(_endpoints(server, app)) == 2

    scaled = await http.post(
        f"/api/v1/apps/{app}/scale", json={"instances": 0}, headers=bearer(server.admin_token)
    )
    assert scaled.status_code == 200, scaled.text
    await eventually(lambda: _command_is(nodes, key, "DEACTIVATE"), "the leader to stop it")
    answer = await nodes.api.report(key, "DEACTIVATING")
    assert answer.withdrawn_revision == answer.revision  # the drain waits for it
    assert _endpoints(server, app) == {}
    loaded = await nodes.api.report(key, "LOADED")
    assert loaded.withdrawn_revision is None


async def _command_is(nodes: FakeNodes, key: str, command: str) -> bool:
    return bool((await nodes.record(key))["command"] == command)


def test_bad_entry_names_are_refused(server: RunningServer) -> None:
    node, app = unique("slicer"), unique("odd")
    _slice_instance(server, node, app, Command.ACTIVATE)
    path = f"/api/v1/nodes/{node}/instances/{app}@1/0"
    cases: list[dict[str, dict[str, Any]]] = [{}, {"../x": {}}, {"a/b": {}}]
    for entries in cases:
        body = {"state": "ACTIVE", "url": URL, "entries": entries}
        assert _call(server, "PUT", path, node, json=body).status_code == 400
    assert _endpoints(server, app) == {}


def test_an_unloaded_slice_leaves_no_endpoint(server: RunningServer) -> None:
    node, app = unique("slicer"), unique("gone")
    _slice_instance(server, node, app, Command.UNLOAD)
    key = instance_key(node, app, 1, 0)
    kv = server.run(server.ctx.store.get(key))
    assert kv is not None
    record = InstanceRecord.model_validate_json(kv.value)
    record = record.model_copy(update={"entries": ["price", "score"], "state": State.LOADED})
    node_kv = server.run(server.ctx.store.get(f"nodes/{node}"))
    assert node_kv is not None
    ops = [Put(key, record.model_dump_json().encode())]
    for entry, schema in ENTRIES.items():
        ep = Endpoint(app=app, entry=entry, node=node, n=0, version=1, url=URL, schema=schema)
        ops.append(
            Put(
                endpoint_key(app, entry, node, 0),
                ep.model_dump_json().encode(),
                lease=node_kv.lease,
            )
        )
    server.run(server.ctx.store.txn([], ops))
    assert len(_endpoints(server, app)) == 2
    answer = _call(server, "DELETE", f"/api/v1/nodes/{node}/instances/{app}@1/0", node).json()
    assert answer["deleted"] is True
    assert _endpoints(server, app) == {}


def test_every_endpoint_key_of_an_instance() -> None:
    record = InstanceRecord(
        app="shop",
        version=1,
        n=2,
        node="n1",
        tenant="t",
        deployment_id="d",
        digest="sha256:" + "0" * 64,
        spec=AppSpec(name="shop", start="s"),
        command=Command.UNLOAD,
    )
    assert instance_endpoint_keys(record) == ["endpoints/shop/web/n1:2"]
    sliced = record.model_copy(update={"entries": ["price", "score"]})
    assert instance_endpoint_keys(sliced) == [
        "endpoints/shop/web/n1:2",
        "endpoints/shop/price/n1:2",
        "endpoints/shop/score/n1:2",
    ]

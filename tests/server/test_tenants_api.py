"""``/api/v1/tenants``: the cluster admin creates, lists, reads, describes and deletes
tenants; a tenant admin reads its own; a forced delete stops and removes everything."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from aether.store.records import DEFAULT_TENANT
from tests.support.api import (
    assert_envelope,
    bearer,
    deploy,
    sha256_of,
    spec_for,
    unique,
    upload,
    upload_random,
)
from tests.support.console import signed_in
from tests.support.fake_nodes import FakeNodes
from tests.support.server import RunningServer, running_server
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Its own server: the fake node here takes the instances the leader places."""
    with running_server(tmp_path_factory.mktemp("tenants"), lease_ttl=120.0) as running:
        yield running


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as client:
        yield client


async def _create(http: httpx.AsyncClient, server: RunningServer, **body: Any) -> dict[str, Any]:
    body.setdefault("name", unique("team"))
    response = await http.post("/api/v1/tenants", json=body, headers=bearer(server.admin_token))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_cluster_admin_creates_a_tenant_with_its_first_admin_token(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    created = await _create(http, server, display_name="Team A", description="payments")
    name, token = created["name"], created["admin_token"]
    assert token and created["display_name"] == "Team A" and created["description"] == "payments"
    assert (created["apps"], created["instances"], created["tasks"]) == (0, 0, 0)
    # the token is the new tenant's admin: it reads its tenant and deploys into it
    own = await http.get(f"/api/v1/tenants/{name}", headers=bearer(token))
    assert own.status_code == 200, own.text
    assert own.json()["admin_token"] is None  # returned once, at creation
    digest = await upload_random(http, token)
    assert (await deploy(http, token, "web", digest, instances=0)).status_code == 201
    listed = await http.get("/api/v1/tenants", headers=bearer(server.admin_token))
    assert listed.status_code == 200
    rows = {t["name"]: t for t in listed.json()}
    assert DEFAULT_TENANT in rows and rows[name]["apps"] == 1
    assert all(t["admin_token"] is None for t in rows.values())


async def test_without_a_token(server: RunningServer, http: httpx.AsyncClient) -> None:
    created = await _create(http, server, admin_token=False)
    assert created["admin_token"] is None and created["display_name"] == ""


async def test_a_taken_name_is_a_conflict(server: RunningServer, http: httpx.AsyncClient) -> None:
    name = (await _create(http, server))["name"]
    again = await http.post(
        "/api/v1/tenants", json={"name": name}, headers=bearer(server.admin_token)
    )
    assert_envelope(again, 409, "conflict")


@pytest.mark.parametrize("name", ["Upper", "a.b", "-x", "", "x" * 64, "under_score"])
async def test_a_bad_name_is_a_bad_request(
    server: RunningServer, http: httpx.AsyncClient, name: str
) -> None:
    response = await http.post(
        "/api/v1/tenants", json={"name": name}, headers=bearer(server.admin_token)
    )
    assert_envelope(response, 400, "bad_request")


async def test_patch_describes_a_tenant(server: RunningServer, http: httpx.AsyncClient) -> None:
    name = (await _create(http, server, display_name="Old"))["name"]
    response = await http.patch(
        f"/api/v1/tenants/{name}",
        json={"description": "the data team"},
        headers=bearer(server.admin_token),
    )
    assert response.status_code == 200, response.text
    assert response.json()["display_name"] == "Old"
    assert response.json()["description"] == "the data team"
    read = await http.get(f"/api/v1/tenants/{name}", headers=bearer(server.admin_token))
    assert read.json()["description"] == "the data team"


async def test_unknown_tenant_is_not_found(server: RunningServer, http: httpx.AsyncClient) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        response = await http.request(
            method, "/api/v1/tenants/nobody-here", json={}, headers=bearer(server.admin_token)
        )
        assert_envelope(response, 404, "not_found")


async def test_a_tenant_admin_reads_only_its_own(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    mine = await _create(http, server)
    theirs = await _create(http, server)
    admin = mine["admin_token"]
    assert (await http.get(f"/api/v1/tenants/{mine['name']}", headers=bearer(admin))).is_success
    other = await http.get(f"/api/v1/tenants/{theirs['name']}", headers=bearer(admin))
    never = await http.get("/api/v1/tenants/never-was", headers=bearer(admin))
    assert_envelope(other, 404, "not_found")
    assert other.json()["message"] == never.json()["message"].replace("never-was", theirs["name"])
    assert_envelope(
        await http.get(f"/api/v1/tenants/{DEFAULT_TENANT}", headers=bearer(admin)),
        404,
        "not_found",
    )


async def test_only_the_cluster_admin_manages_tenants(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant = await _create(http, server)
    name = tenant["name"]
    callers = {
        "tenant admin": tenant["admin_token"],
        "tenant operator": server.mint("operator", name),
        "tenant viewer": server.mint("viewer", name),
        "cluster operator": server.mint("operator"),
        "cluster viewer": server.mint("viewer"),
    }
    for who, token in callers.items():
        for method, path, body in (
            ("POST", "/api/v1/tenants", {"name": unique("x")}),
            ("GET", "/api/v1/tenants", None),
            ("PATCH", f"/api/v1/tenants/{name}", {"description": "no"}),
            ("DELETE", f"/api/v1/tenants/{name}", None),
        ):
            response = await http.request(method, path, json=body, headers=bearer(token))
            assert response.status_code == 403, (who, method, path, response.text)
            assert_envelope(response, 403, "forbidden")
    for who in ("tenant operator", "tenant viewer"):
        response = await http.get(f"/api/v1/tenants/{name}", headers=bearer(callers[who]))
        assert_envelope(response, 403, "forbidden")
    assert (
        await http.get(f"/api/v1/tenants/{name}", headers=bearer(server.admin_token))
    ).is_success
    assert_envelope(await http.get("/api/v1/tenants"), 401, "unauthorized")


async def test_the_default_tenant_cannot_be_deleted(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    for query in ("", "?force=true"):
        response = await http.delete(
            f"/api/v1/tenants/{DEFAULT_TENANT}{query}", headers=bearer(server.admin_token)
        )
        assert_envelope(response, 409, "conflict")
    assert (await http.get("/api/v1/apps", headers=bearer(server.admin_token))).is_success


async def test_an_idle_tenant_is_deleted_with_its_records_and_tokens(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant = await _create(http, server)
    name, admin = tenant["name"], tenant["admin_token"]
    digest = await upload_random(http, admin)
    assert (await deploy(http, admin, "idle", digest, instances=0)).status_code == 201
    response = await http.delete(f"/api/v1/tenants/{name}", headers=bearer(server.admin_token))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == name and body["forced"] is False
    assert body["tokens_revoked"] == 1 and body["artifacts_deleted"] == 1
    assert_envelope(await http.get("/api/v1/apps", headers=bearer(admin)), 401, "unauthorized")
    assert_envelope(
        await http.get(f"/api/v1/tenants/{name}", headers=bearer(server.admin_token)),
        404,
        "not_found",
    )
    assert not server.run(server.ctx.registry.exists(digest))
    assert server.run(server.ctx.records.find_tenant(name)) is None


async def test_running_workloads_refuse_a_delete_and_force_stops_them(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    nodes = FakeNodes(server)
    try:
        await nodes.register(unique("n"))
        tenant = await _create(http, server)
        name, admin = tenant["name"], tenant["admin_token"]
        data = os.urandom(512)  # another tenant holds the same blob
        for token in (admin, server.new_tenant()):
            assert (await upload(http, token, data)).is_success
        shared = sha256_of(data)
        own = await upload_random(http, admin)
        response = await deploy(http, admin, "shop", own, instances=1, spec=spec_for("shop"))
        assert response.status_code == 201, response.text
        assert (await deploy(http, admin, "shop2", shared, instances=0)).status_code == 201
        task = await http.post(
            "/api/v1/tasks",
            json={"type": "vm:create", "payload": {"name": "box"}, "delay": 3600},
            headers=bearer(admin),
        )
        assert task.status_code == 201, task.text
        vm_id = task.json()["payload"]["vm_id"]
        server.run(server.ctx.records.update_sandbox(vm_id, node="n-box", status="running"))
        with signed_in(server.base_url, admin) as console:
            cookie = console.cookies["aether_session"]
        (inst,) = await eventually(lambda: _instances_of(server, name), "a placement")
        await nodes.bring_up(inst)

        refused = await http.delete(f"/api/v1/tenants/{name}", headers=bearer(server.admin_token))
        body = assert_envelope(refused, 409, "conflict")
        assert "shop" in body["message"] and "task" in body["message"]
        assert "sandbox" in body["message"] and "--force" in body["message"]
        assert (await http.get("/api/v1/apps/shop", headers=bearer(admin))).is_success

        forced = await http.delete(
            f"/api/v1/tenants/{name}?force=true", headers=bearer(server.admin_token)
        )
        assert forced.status_code == 200, forced.text
        done = forced.json()
        assert done["forced"] is True and done["apps_deleted"] == 2
        assert done["instances_stopping"] == 1 and done["tasks_cancelled"] == 1
        assert done["sandboxes_deleted"] == 1 and done["tokens_revoked"] == 1
        assert done["artifacts_deleted"] == 1  # the shared blob stays for the other tenant

        # the leader retires the instance; the blueprint and endpoints are gone
        await eventually(lambda: _command_or_gone(server, inst), "the instance to be told to stop")
        assert server.run(server.ctx.store.get("blueprints/shop")) is None
        assert server.run(server.ctx.store.range("endpoints/shop/"))[0] == []
        # its token and console session stop working; its records and blob are gone
        assert_envelope(await http.get("/api/v1/apps", headers=bearer(admin)), 401, "unauthorized")
        http.cookies.set("aether_session", cookie)
        assert_envelope(await http.get("/api/v1/apps"), 401, "session_expired")
        http.cookies.clear()
        assert not server.run(server.ctx.registry.exists(own))
        assert server.run(server.ctx.registry.exists(shared))
        assert server.run(server.ctx.records.find_tenant(name)) is None
        # the node holding its sandbox is asked to delete it, as the cluster
        cluster = server.run(server.ctx.records.ensure_tenant(DEFAULT_TENANT))
        queued = server.run(server.ctx.queue.list(cluster.id, limit=1000))
        assert any(
            t.type == "vm:delete" and t.payload["vm_id"] == vm_id and t.node == "n-box"
            for t in queued
        )
    finally:
        await nodes.close()


async def _instances_of(server: RunningServer, tenant: str) -> list[str]:
    row = server.run(server.ctx.records.find_tenant(tenant))
    assert row is not None
    kvs, _ = server.run(server.ctx.store.range("instances/"))
    return [kv.key for kv in kvs if json.loads(kv.value)["tenant"] == row.id]


async def _command_or_gone(server: RunningServer, key: str) -> bool:
    kv = server.run(server.ctx.store.get(key))
    return kv is None or json.loads(kv.value)["command"] in ("DEACTIVATE", "UNLOAD")

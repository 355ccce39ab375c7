"""App names are each tenant's own: two tenants deploy ``web``, each sees only its own.

Inside the cluster tenant T's ``web`` is ``web.T`` (``model.names``); every answer a
tenant gets names its app ``web``, and nothing tells it another tenant has one.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.support.api import bearer, deploy, unique, upload_random
from tests.support.fake_nodes import FakeNodes
from tests.support.server import RunningServer, running_server
from tests.support.waiting import eventually

APP = "web"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Its own server (the name ``web`` is free in it); long leases: fake nodes do not
    heartbeat."""
    with running_server(tmp_path_factory.mktemp("names"), lease_ttl=120.0) as running:
        yield running


class Tenant:
    def __init__(self, server: RunningServer) -> None:
        self.name = unique("t")
        self.token = server.mint("admin", self.name)
        found = server.run(server.ctx.records.find_tenant(self.name))
        assert found is not None
        self.id = found.id
        self.headers = bearer(self.token)


async def _get(http: httpx.AsyncClient, tenant: Tenant, path: str, **params: Any) -> Any:
    response = await http.get(path, params=params, headers=tenant.headers)
    assert response.status_code == 200, (path, response.text)
    return response.json()


def _public_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


async def test_two_tenants_deploy_the_same_name_and_each_sees_only_its_own(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    a, b = Tenant(server), Tenant(server)
    node = await nodes.register(unique("names"))
    digests = {}
    deployments = {}
    for tenant in (a, b):
        digests[tenant.name] = await upload_random(http, tenant.token)
        answer = await deploy(http, tenant.token, APP, digests[tenant.name], instances=1)
        assert answer.status_code == 201, answer.text  # no 409 for a name another uses
        assert answer.json()["app"] == APP
        deployments[tenant.name] = answer.json()["id"]

    keys = {}
    for tenant in (a, b):

        async def placed(tenant: Tenant = tenant) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = await _get(http, tenant, "/api/v1/instances", app=APP)
            return found

        (instance,) = await eventually(placed, f"{tenant.name}'s instance placed")
        assert instance["app"] == APP
        assert instance["key"].startswith(f"instances/{node}/{APP}.{tenant.name}@1/")
        keys[tenant.name] = instance["key"]
        await nodes.bring_up(instance["key"])

    pushed = await http.post(
        f"/api/v1/nodes/{node}/logs",
        json={
            "entries": [
                {"tenant": t.id, "app": f"{APP}.{t.name}", "label": "web", "text": f"hi {t.name}"}
                for t in (a, b)
            ]
        },
        headers=bearer(server.node_token(node)),
    )
    assert pushed.json() == {"schema": 1, "accepted": 2}, pushed.text

    for tenant, other in ((a, b), (b, a)):

        async def active(tenant: Tenant = tenant) -> bool:
            app = await _get(http, tenant, f"/api/v1/apps/{APP}")
            return bool(app["instances_active"] == 1)

        await eventually(active, f"{tenant.name}'s web ACTIVE")
        app = await _get(http, tenant, f"/api/v1/apps/{APP}")
        assert (app["name"], app["version"]) == (APP, 1)
        assert app["route"] == f"/t/{tenant.name}/apps/{APP}/"
        assert app["deployment_id"] == deployments[tenant.name]
        listed = await _get(http, tenant, "/api/v1/apps")
        assert [x["name"] for x in listed] == [APP]
        history = await _get(http, tenant, f"/api/v1/apps/{APP}/deployments")
        assert [d["id"] for d in history] == [deployments[tenant.name]]
        blueprint = await _get(http, tenant, f"/api/v1/blueprints/{APP}")
        assert (blueprint["app"], blueprint["digest"]) == (APP, digests[tenant.name])
        deployment = await _get(http, tenant, f"/api/v1/deployments/{deployments[tenant.name]}")
        assert [i["key"] for i in deployment["instance_list"]] == [keys[tenant.name]]
        assert [e["app"] for e in await _get(http, tenant, "/api/v1/endpoints")] == [APP]
        status = await _get(http, tenant, "/api/v1/status")
        assert [x["deployment_id"] for x in status["apps"]] == [deployments[tenant.name]]
        logs = await http.get(f"/api/v1/apps/{APP}/logs", headers=tenant.headers)
        assert logs.text == f"[web@{node}] hi {tenant.name}\n"
        for path in ("/api/v1/instances", "/api/v1/blueprints", "/api/v1/endpoints"):
            text = (await http.get(path, headers=tenant.headers)).text
            assert other.name not in text and deployments[other.name] not in text, path
        key = await http.post(
            f"/api/v1/apps/{APP}/public-keys",
            json={"public_key": _public_key()},
            headers=tenant.headers,
        )
        assert key.status_code == 201, key.text
        settings = await http.put(
            f"/api/v1/apps/{APP}/settings", json={"retain_deployments": 5}, headers=tenant.headers
        )
        assert settings.status_code == 200, settings.text

    # the default tenant has no web: the same 404 as for a name nobody has
    cluster = bearer(server.admin_token)
    ghost = unique("ghost")
    for path in ("/api/v1/apps/{}", "/api/v1/blueprints/{}", "/api/v1/apps/{}/deployments"):
        mine = await http.get(path.format(APP), headers=cluster)
        nobody = await http.get(path.format(ghost), headers=cluster)
        assert mine.status_code == nobody.status_code == 404
        assert mine.json()["message"] == nobody.json()["message"].replace(ghost, APP)

    # deleting A's web leaves B's as it was
    deleted = await http.delete(f"/api/v1/apps/{APP}", headers=a.headers)
    assert deleted.status_code == 200, deleted.text
    assert (await http.get(f"/api/v1/blueprints/{APP}", headers=a.headers)).status_code == 404
    kept = await _get(http, b, f"/api/v1/blueprints/{APP}")
    assert kept["digest"] == digests[b.name]
    assert [i["key"] for i in await _get(http, b, "/api/v1/instances", app=APP)] == [keys[b.name]]


async def test_deleting_removes_the_tenant_s_blueprint_kept_under_the_plain_name(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    """A blueprint written before cluster names (``blueprints/{app}`` of a tenant other
    than default) goes when the tenant deletes the app; the default tenant's stays."""
    a, b = Tenant(server), Tenant(server)
    app = unique("legacy")
    for tenant in (a, b):
        digest = await upload_random(http, tenant.token)
        assert (await deploy(http, tenant.token, app, digest, instances=0)).status_code == 201
    store = server.ctx.store
    kv = server.run(store.get(f"blueprints/{app}.{a.name}"))
    assert kv is not None
    server.run(store.put(f"blueprints/{app}", kv.value))  # as an older release wrote it

    # another tenant's delete leaves it; its owner's removes it and its own
    assert (await http.delete(f"/api/v1/apps/{app}", headers=b.headers)).status_code == 200
    assert server.run(store.get(f"blueprints/{app}")) is not None
    assert (await http.delete(f"/api/v1/apps/{app}", headers=a.headers)).status_code == 200
    assert server.run(store.get(f"blueprints/{app}")) is None
    assert server.run(store.get(f"blueprints/{app}.{a.name}")) is None

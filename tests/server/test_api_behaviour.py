"""What the API does when it succeeds: probes, artifacts, deployments, tenancy, nodes."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from aether.artifacts import pack
from aether.artifacts.build.detect import load_app_spec
from aether.client import ApiClient
from aether.errors import ConflictError, ForbiddenError, NotFoundError
from aether.model.api import DeploymentOut, RegisterIn
from aether.model.cluster import NodeCapabilities
from tests.support.api import (
    DIGEST_HEADER,
    assert_envelope,
    bearer,
    deploy,
    sha256_of,
    unique,
    upload,
    upload_random,
)
from tests.support.server import RunningServer

# -- probes, auth on every route, OpenAPI ---------------------------------------------


async def test_probes_need_no_token(http: httpx.AsyncClient) -> None:
    health = await http.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert health.headers["x-trace-id"]
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert isinstance(ready.json()["revision"], int)


async def test_every_api_route_needs_a_token(http: httpx.AsyncClient) -> None:
    """... but signing in, which is how one gets a token (``/api/v1/auth/...``), and the
    cluster's CA certificates (``/api/v1/cluster/trust``: public, what a node trusts)."""
    spec = (await http.get("/openapi.json")).json()
    checked = 0
    for path, operations in spec["paths"].items():
        if not path.startswith("/api/v1/") or path.startswith("/api/v1/auth/"):
            continue
        if path == "/api/v1/cluster/trust":
            continue
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        for method in operations:
            response = await http.request(method.upper(), concrete)
            assert response.status_code == 401, (method, path, response.status_code)
            if method != "head":
                assert_envelope(response, 401, "unauthorized")
            checked += 1
    assert checked >= 20


async def test_openapi_lists_the_main_paths(http: httpx.AsyncClient) -> None:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["info"]["title"] == "Aether"
    paths: dict[str, dict[str, Any]] = spec["paths"]
    expected = {
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/api/v1/artifacts": {"post"},
        "/api/v1/artifacts/{digest}": {"get", "head"},
        "/api/v1/apps": {"get"},
        "/api/v1/apps/{app}": {"get"},
        "/api/v1/apps/{app}/deployments": {"get", "post"},
        "/api/v1/apps/{app}/scale": {"post"},
        "/api/v1/apps/{app}/rollback": {"post"},
        "/api/v1/apps/{app}/logs": {"get"},
        "/api/v1/deployments/{deployment_id}": {"get"},
        "/api/v1/nodes": {"get"},
        "/api/v1/nodes/register": {"post"},
        "/api/v1/nodes/{node}/heartbeat": {"post"},
        "/api/v1/nodes/{node}/assignments": {"get"},
        "/api/v1/status": {"get"},
        "/api/v1/blueprints": {"get"},
        "/api/v1/instances": {"get"},
        "/api/v1/endpoints": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    assert (await http.get("/docs")).status_code == 200


# -- artifacts -------------------------------------------------------------------------


async def test_upload_head_get_roundtrip_and_duplicate(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    data = os.urandom(70_000)  # more than one chunk on the way back
    digest = sha256_of(data)
    auth = bearer(server.admin_token)

    first = await upload(http, server.admin_token, data)
    assert first.status_code == 201
    assert first.json() == {
        "digest": digest,
        "size_bytes": len(data),
        "duplicate": False,
        "verified": False,  # unsigned
    }

    head = await http.head(f"/api/v1/artifacts/{digest}", headers=auth)
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == len(data)
    assert head.headers[DIGEST_HEADER] == digest
    assert head.content == b""

    got = await http.get(f"/api/v1/artifacts/{digest}", headers=auth)
    assert got.status_code == 200
    assert got.content == data
    assert int(got.headers["content-length"]) == len(data)

    again = await upload(http, server.admin_token, data)
    assert again.status_code == 201
    assert again.json() == {
        "digest": digest,
        "size_bytes": len(data),
        "duplicate": True,
        "verified": False,
    }

    # an operator may upload too; a node reads only what is assigned to it (nothing here)
    assert (await upload(http, server.token("operator"), data)).json()["duplicate"] is True
    node_got = await http.get(
        f"/api/v1/artifacts/{digest}", headers=bearer(server.node_token(unique("idle")))
    )
    assert_envelope(node_got, 403, "forbidden")


async def test_real_packed_artifact_through_the_typed_client(
    server: RunningServer, tmp_path: Path
) -> None:
    app = unique("packed")
    tree = tmp_path / "app"
    tree.mkdir()
    (tree / "aether.toml").write_text(f'name = "{app}"\nstart = "python3 server.py"\n')
    (tree / "server.py").write_text("print('hello')\n")
    archive = tmp_path / "app.tar.gz"
    packed = pack(tree, archive)
    spec = load_app_spec(tree)

    async with ApiClient(server.base_url, server.admin_token) as client:
        assert not await client.has_artifact(packed.digest)
        result = await client.upload_artifact(archive, packed.digest)
        assert result == {
            "digest": packed.digest,
            "size_bytes": packed.size_bytes,
            "duplicate": False,
            "verified": False,
        }
        assert await client.has_artifact(packed.digest)
        back = tmp_path / "back.tar.gz"
        await client.download_artifact(packed.digest, back)
        assert back.read_bytes() == archive.read_bytes()

        dep = await client.create_deployment(app, packed.digest, spec, idempotency_key="k1")
        assert (dep.app, dep.version, dep.digest, dep.instances) == (app, 1, packed.digest, 1)
        assert dep.spec.start == "python3 server.py"
        assert dep.status == "pending"
        detail = await client.deployment(dep.id)
        assert detail.events and detail.events[0].type == "created"
        assert [a.name for a in await client.apps() if a.name == app] == [app]

    # the typed client turns envelopes back into the same exception tree
    async with ApiClient(server.base_url, server.token("viewer")) as viewer:
        try:
            await viewer.scale(app, 2)
        except ForbiddenError as exc:
            assert exc.status == 403
        else:
            raise AssertionError("a viewer scaled an app")
        try:
            await viewer.deployment(uuid.uuid4().hex)
        except NotFoundError as exc:
            assert exc.code == "not_found"
        else:
            raise AssertionError("an unknown deployment was found")


# -- tenancy ---------------------------------------------------------------------------


async def _register(
    http: httpx.AsyncClient, token: str, node: str, *, cpus: float = 64, memory_mb: int = 65536
) -> dict[str, Any]:
    body = RegisterIn(
        id=node,
        capabilities=NodeCapabilities(cpus=cpus, memory_mb=memory_mb, drivers=["process"]),
        router_url="http://127.0.0.1:9",
    )
    response = await http.post(
        "/api/v1/nodes/register", json=body.model_dump(mode="json"), headers=bearer(token)
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def _place_on(
    http: httpx.AsyncClient, server: RunningServer, node: str, app: str, owner: dict[str, str]
) -> None:
    """Register ``node`` (a big one) and heartbeat it until the leader places ``app`` there."""
    reg = await _register(http, server.node_token(node), node)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await http.post(
            f"/api/v1/nodes/{node}/heartbeat",
            json={"lease_id": reg["lease_id"]},
            headers=bearer(server.node_token(node)),
        )
        placed = (await http.get("/api/v1/instances", params={"app": app}, headers=owner)).json()
        if any(i["node"] == node for i in placed):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"app {app} was not placed on node {node}")


async def test_tenants_are_isolated(server: RunningServer, http: httpx.AsyncClient) -> None:
    a, b = bearer(server.new_tenant()), bearer(server.new_tenant())
    app = unique("isolated")
    digest = await upload_random(http, a["Authorization"].split()[1])

    # a node so that the leader places A's instance (and there is something to hide)
    node = unique("isonode")
    reg = await _register(http, server.node_token(node), node)
    created = await http.post(
        f"/api/v1/apps/{app}/deployments",
        json={"digest": digest, "spec": {"name": app, "start": "sleep 1"}, "instances": 1},
        headers=a,
    )
    assert created.status_code == 201
    dep_id = created.json()["id"]

    deadline = time.monotonic() + 5
    placed: list[dict[str, Any]] = []
    while not placed and time.monotonic() < deadline:
        await http.post(
            f"/api/v1/nodes/{node}/heartbeat",
            json={"lease_id": reg["lease_id"]},
            headers=bearer(server.node_token(node)),
        )
        placed = (await http.get("/api/v1/instances", params={"app": app}, headers=a)).json()
        await asyncio.sleep(0.05)
    assert placed and placed[0]["node"] == node

    # B sees none of it
    assert (await http.head(f"/api/v1/artifacts/{digest}", headers=b)).status_code == 404
    assert_envelope(await http.get(f"/api/v1/artifacts/{digest}", headers=b), 404, "not_found")
    assert app not in {x["name"] for x in (await http.get("/api/v1/apps", headers=b)).json()}
    assert_envelope(await http.get(f"/api/v1/apps/{app}", headers=b), 404, "not_found")
    assert_envelope(await http.get(f"/api/v1/apps/{app}/deployments", headers=b), 404, "not_found")
    assert_envelope(await http.get(f"/api/v1/deployments/{dep_id}", headers=b), 404, "not_found")
    assert_envelope(await http.get(f"/api/v1/blueprints/{app}", headers=b), 404, "not_found")
    assert_envelope(await http.get(f"/api/v1/apps/{app}/logs", headers=b), 404, "not_found")
    assert (await http.get("/api/v1/instances", headers=b)).json() == []
    assert (await http.get("/api/v1/instances", params={"app": app}, headers=b)).json() == []
    assert (await http.get("/api/v1/endpoints", headers=b)).json() == []
    assert (await http.get("/api/v1/blueprints", headers=b)).json() == []
    status = (await http.get("/api/v1/status", headers=b)).json()
    assert status["apps"] == []
    # and B cannot act on it
    assert_envelope(
        await http.post(f"/api/v1/apps/{app}/scale", json={"instances": 5}, headers=b),
        404,
        "not_found",
    )
    assert_envelope(
        await http.post(f"/api/v1/apps/{app}/rollback", json={}, headers=b), 404, "not_found"
    )
    # while A still sees all of it
    assert (await http.get(f"/api/v1/deployments/{dep_id}", headers=a)).status_code == 200
    assert (await http.get(f"/api/v1/blueprints/{app}", headers=a)).json()["instances"] == 1
    # stop A's instance being placed on nodes other tests register
    await http.post(f"/api/v1/apps/{app}/scale", json={"instances": 0}, headers=a)


# -- deployments -----------------------------------------------------------------------


async def test_same_idempotency_key_and_body_replays_the_deployment(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = unique("idem")
    digest = await upload_random(http, server.admin_token)
    key = uuid.uuid4().hex
    first = await deploy(http, server.admin_token, app, digest, key=key, instances=0)
    second = await deploy(http, server.admin_token, app, digest, key=key, instances=0)
    assert first.status_code == second.status_code == 201
    assert second.headers.get("idempotent-replay") == "true"
    assert first.json() == second.json()
    deps = (
        await http.get(f"/api/v1/apps/{app}/deployments", headers=bearer(server.admin_token))
    ).json()
    assert [d["id"] for d in deps] == [first.json()["id"]]

    # a new key is a new deployment
    third = await deploy(http, server.admin_token, app, digest, key=uuid.uuid4().hex, instances=0)
    assert third.json()["version"] == 2


async def test_concurrent_repeats_of_one_key_create_one_deployment(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    """Was a race: concurrent repeats all missed the lookup and each made a version."""
    app = unique("race")
    digest = await upload_random(http, server.admin_token)
    key = uuid.uuid4().hex
    responses = await asyncio.gather(
        *(deploy(http, server.admin_token, app, digest, key=key, instances=0) for _ in range(6))
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replay") == "true" for r in responses) == 5
    deps = (
        await http.get(f"/api/v1/apps/{app}/deployments", headers=bearer(server.admin_token))
    ).json()
    assert [d["version"] for d in deps] == [1]


async def test_longest_key_on_the_longest_app_name_is_idempotent(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    """Method, path and a 255-character key exceed the key column's 255: stored hashed."""
    app = unique("long").ljust(63, "x")
    digest = await upload_random(http, server.admin_token)
    key = "k" * 255
    first = await deploy(http, server.admin_token, app, digest, key=key, instances=0)
    again = await deploy(http, server.admin_token, app, digest, key=key, instances=0)
    assert first.status_code == again.status_code == 201
    assert again.headers.get("idempotent-replay") == "true"
    assert first.json()["id"] == again.json()["id"]
    other = await deploy(http, server.admin_token, app, digest, key=key, instances=1)
    assert_envelope(other, 409, "conflict")


async def test_a_failed_request_does_not_burn_its_idempotency_key(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = unique("retry")
    data = os.urandom(256)
    key = uuid.uuid4().hex
    refused = await deploy(http, server.admin_token, app, sha256_of(data), key=key, instances=0)
    assert_envelope(refused, 400, "bad_request")
    assert (await upload(http, server.admin_token, data)).status_code == 201
    retried = await deploy(http, server.admin_token, app, sha256_of(data), key=key, instances=0)
    assert retried.status_code == 201
    assert "idempotent-replay" not in retried.headers
    assert retried.json()["version"] == 1


async def test_deployments_are_listed_newest_first(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = unique("history")
    digests = [await upload_random(http, server.admin_token) for _ in range(3)]
    ids = []
    for digest in digests:
        response = await deploy(http, server.admin_token, app, digest, instances=0)
        assert response.status_code == 201
        ids.append(response.json()["id"])
    auth = bearer(server.admin_token)
    listed = [
        DeploymentOut.model_validate(d)
        for d in (await http.get(f"/api/v1/apps/{app}/deployments", headers=auth)).json()
    ]
    assert [d.version for d in listed] == [3, 2, 1]
    assert [d.id for d in listed] == ids[::-1]
    assert [d.digest for d in listed] == digests[::-1]
    assert all(d.app == app and d.spec.name == app for d in listed)

    summary = (await http.get(f"/api/v1/apps/{app}", headers=auth)).json()
    assert (summary["version"], summary["deployment_id"]) == (3, ids[-1])
    detail = (await http.get(f"/api/v1/deployments/{ids[0]}", headers=auth)).json()
    assert detail["version"] == 1
    assert detail["instance_list"] == []
    # a viewer reads the same history
    as_viewer = await http.get(
        f"/api/v1/apps/{app}/deployments", headers=bearer(server.token("viewer"))
    )
    assert [d["version"] for d in as_viewer.json()] == [3, 2, 1]


async def test_scale_changes_the_blueprint(server: RunningServer, http: httpx.AsyncClient) -> None:
    app = unique("scaled")
    digest = await upload_random(http, server.admin_token)
    operator = server.token("operator")
    assert (await deploy(http, operator, app, digest, instances=0)).status_code == 201
    auth = bearer(operator)

    scaled = await http.post(f"/api/v1/apps/{app}/scale", json={"instances": 3}, headers=auth)
    assert scaled.status_code == 200
    assert scaled.json()["name"] == app
    assert scaled.json()["instances_desired"] == 3
    bp = (await http.get(f"/api/v1/blueprints/{app}", headers=auth)).json()
    assert (bp["instances"], bp["version"], bp["digest"]) == (3, 1, digest)

    # scaling keeps the version; a redeploy without a count keeps the scale
    again = await deploy(http, operator, app, digest)
    assert again.json()["version"] == 2
    assert again.json()["instances"] == 3
    down = await http.post(f"/api/v1/apps/{app}/scale", json={"instances": 0}, headers=auth)
    assert down.json()["instances_desired"] == 0
    dep_id = again.json()["id"]
    events = (await http.get(f"/api/v1/deployments/{dep_id}", headers=auth)).json()["events"]
    # (the leader may add "placed" events: other tests' nodes may be alive)
    mine = [(e["type"], e["message"]) for e in events if e["type"] in ("created", "scaled")]
    assert [t for t, _ in mine] == ["created", "scaled"]
    assert "3 → 0" in mine[1][1]


async def test_rollback_creates_the_next_version_of_the_old_artifact(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = unique("rollback")
    old = await upload_random(http, server.admin_token)
    new = await upload_random(http, server.admin_token)
    assert (await deploy(http, server.admin_token, app, old, instances=0)).status_code == 201
    assert (await deploy(http, server.admin_token, app, new, instances=0)).status_code == 201
    auth = bearer(server.admin_token)

    rolled = await http.post(f"/api/v1/apps/{app}/rollback", json={}, headers=auth)
    assert rolled.status_code == 201
    body = rolled.json()
    assert (body["version"], body["rollback_of"], body["digest"]) == (3, 1, old)
    bp = (await http.get(f"/api/v1/blueprints/{app}", headers=auth)).json()
    assert (bp["version"], bp["digest"], bp["deployment_id"]) == (3, old, body["id"])

    # an explicit version
    forward = await http.post(f"/api/v1/apps/{app}/rollback", json={"version": 2}, headers=auth)
    assert forward.status_code == 201
    assert (forward.json()["version"], forward.json()["rollback_of"]) == (4, 2)
    assert forward.json()["digest"] == new

    versions = (await http.get(f"/api/v1/apps/{app}/deployments", headers=auth)).json()
    assert [(d["version"], d["rollback_of"]) for d in versions] == [
        (4, 2),
        (3, 1),
        (2, None),
        (1, None),
    ]

    async with ApiClient(server.base_url, server.admin_token) as client:
        key = uuid.uuid4().hex
        once = await client.rollback(app, 1, idempotency_key=key)
        twice = await client.rollback(app, 1, idempotency_key=key)
        assert once.id == twice.id and once.version == 5
        try:
            await client.rollback(app, 2, idempotency_key=key)
        except ConflictError as exc:
            assert exc.status == 409
        else:
            raise AssertionError("a reused Idempotency-Key with a new body was accepted")


# -- nodes -----------------------------------------------------------------------------


async def test_node_registers_heartbeats_and_shows_ready(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    node = unique("node")
    async with ApiClient(server.base_url, server.node_token(node)) as client:
        reg = await client.register(
            RegisterIn(
                id=node,
                capabilities=NodeCapabilities(
                    cpus=2,
                    memory_mb=2048,
                    drivers=["process"],
                    labels={"zone": "a"},
                    criu=False,
                    criu_detail="criu is not installed (apt-get install criu)",
                    features=["telemetry", "request_ids", "cooperative_checkpoint"],
                ),
                router_url="http://127.0.0.1:9",
            )
        )
        assert reg.node_id == node
        # the handshake: what the node can and speaks is on, the rest off with a reason
        assert reg.config.features["telemetry"] is True
        assert reg.config.features["request_ids"] is True
        assert reg.config.features["criu"] is False
        assert reg.config.reasons["criu"] == "the node does not speak criu_checkpoint"
        assert reg.lease_id > 0
        assert reg.lease_ttl == server.ctx.settings.lease_ttl
        assert 0 < reg.heartbeat_interval < reg.lease_ttl
        await client.heartbeat(node, reg.lease_id)
        beat = await http.post(
            f"/api/v1/nodes/{node}/heartbeat",
            json={"lease_id": reg.lease_id},
            headers=bearer(server.node_token(node)),
        )
        assert beat.status_code == 200
        assert beat.json()["ttl"] > 0

        stale = await http.post(
            f"/api/v1/nodes/{node}/heartbeat",
            json={"lease_id": reg.lease_id + 1},
            headers=bearer(server.node_token(node)),
        )
        assert_envelope(stale, 404, "lease_not_found")

    async with ApiClient(server.base_url, server.token("viewer")) as viewer:
        nodes = {n.id: n for n in await viewer.nodes()}
        assert nodes[node].state == "ready"
        assert nodes[node].capabilities.labels == {"zone": "a"}
        assert nodes[node].config == reg.config
        status = await viewer.status()
        assert {n.id: n.state for n in status.nodes}[node] == "ready"
        assert status.leader is not None
        assert status.revision >= reg.revision
        assert status.api_url == server.ctx.settings.api_url()

    # registering again replaces the lease: the old one no longer heartbeats
    again = await _register(http, server.node_token(node), node)
    assert again["lease_id"] != reg.lease_id
    old = await http.post(
        f"/api/v1/nodes/{node}/heartbeat",
        json={"lease_id": reg.lease_id},
        headers=bearer(server.node_token(node)),
    )
    assert_envelope(old, 404, "lease_not_found")


async def test_drain_and_undrain_are_visible(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    node = unique("drained")
    await _register(http, server.node_token(node), node)
    operator = bearer(server.token("operator"))
    drained = await http.post(f"/api/v1/nodes/{node}/drain", headers=operator)
    assert drained.json() == {"node": node, "draining": True, "migrations": []}
    states = {
        n["id"]: n["state"] for n in (await http.get("/api/v1/nodes", headers=operator)).json()
    }
    assert states[node] == "draining"
    await http.post(f"/api/v1/nodes/{node}/undrain", headers=operator)
    states = {
        n["id"]: n["state"] for n in (await http.get("/api/v1/nodes", headers=operator)).json()
    }
    assert states[node] == "ready"


async def test_logs_pushed_by_a_node_are_read_by_the_owning_tenant(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = unique("logged")
    digest = await upload_random(http, server.admin_token)
    assert (await deploy(http, server.admin_token, app, digest, instances=1)).status_code == 201
    tenant_id = server.run(server.ctx.records.ensure_tenant()).id
    node = unique("lognode")  # a node runs an instance of the app: its logs are taken
    await _place_on(http, server, node, app, bearer(server.admin_token))
    pushed = await http.post(
        f"/api/v1/nodes/{node}/logs",
        json={"entries": [{"tenant": tenant_id, "app": app, "label": "web", "text": "a\nb"}]},
        headers=bearer(server.node_token(node)),
    )
    assert pushed.json() == {"schema": 1, "accepted": 1}
    logs = await http.get(
        f"/api/v1/apps/{app}/logs", params={"tail": 1}, headers=bearer(server.token("viewer"))
    )
    assert logs.status_code == 200
    assert logs.text == f"[web@{node}] b\n"

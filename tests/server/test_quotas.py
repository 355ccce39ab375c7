"""Quotas per tenant: each refused with its name, limit and use, and nothing changed;
the limits routes per role and tenant. On the session's shared server, each test with
tenants of its own (the cluster admin is the default tenant's admin)."""

from __future__ import annotations

import os
from typing import Any

import httpx

from tests.support.api import (
    DIGEST_HEADER,
    bearer,
    deploy,
    sha256_of,
    spec_for,
    unique,
    upload_random,
)
from tests.support.server import RunningServer


async def _set_limits(
    http: httpx.AsyncClient, server: RunningServer, tenant: str, **limits: Any
) -> dict[str, Any]:
    response = await http.put(
        f"/api/v1/tenants/{tenant}/limits", json=limits, headers=bearer(server.admin_token)
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _refused(response: httpx.Response, quota: str, limit: float, used: float, asked: float) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["code"] == "quota_exceeded"
    assert body["message"] == (
        f"quota {quota!r} exceeded: limit {limit:g}, in use {used:g}, asked {asked:g}"
    )
    assert (body["quota"], body["limit"], body["used"], body["requested"]) == (
        quota,
        limit,
        used,
        asked,
    )
    assert body["trace_id"]


async def _usage(http: httpx.AsyncClient, token: str) -> dict[str, Any]:
    response = await http.get("/api/v1/limits", headers=bearer(token))
    assert response.status_code == 200, response.text
    usage: dict[str, Any] = response.json()["usage"]
    return usage


async def test_instances_quota_at_deploy_and_scale(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant = unique("tenant")
    token = server.mint("admin", tenant)
    await _set_limits(http, server, tenant, instances=10)
    digest = await upload_random(http, token)
    first, second = unique("app"), unique("app")
    assert (await deploy(http, token, first, digest, instances=8)).status_code == 201

    refused = await deploy(http, token, second, digest, instances=4)
    _refused(refused, "instances", 10, 8, 4)
    assert (await http.get(f"/api/v1/apps/{second}", headers=bearer(token))).status_code == 404

    scaled = await http.post(
        f"/api/v1/apps/{first}/scale", json={"instances": 11}, headers=bearer(token)
    )
    _refused(scaled, "instances", 10, 8, 3)
    assert (await _usage(http, token))["instances"] == 8  # nothing changed
    down = await http.post(
        f"/api/v1/apps/{first}/scale", json={"instances": 2}, headers=bearer(token)
    )
    assert down.status_code == 200, down.text
    assert (await deploy(http, token, second, digest, instances=4)).status_code == 201
    assert (await _usage(http, token))["instances"] == 6


async def test_cpu_and_memory_quotas_count_instances_times_the_reservation(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant = unique("tenant")
    token = server.mint("admin", tenant)
    await _set_limits(http, server, tenant, cpu=2, memory_mb=1000)
    digest = await upload_random(http, token)
    app = unique("app")
    spec = spec_for(app, resources={"cpu": 0.5, "memory_mb": 100})
    assert (await deploy(http, token, app, digest, instances=3, spec=spec)).status_code == 201
    usage = await _usage(http, token)
    assert (usage["cpu"], usage["memory_mb"]) == (1.5, 300)

    _refused(
        await deploy(http, token, unique("app"), digest, instances=2, spec=spec), "cpu", 2, 1.5, 1
    )
    big = spec_for(app, resources={"cpu": 0.1, "memory_mb": 400})
    # a redeploy counts what it adds over the app's current reservation: 3 x 400 - 300
    _refused(await deploy(http, token, app, digest, spec=big), "memory_mb", 1000, 300, 900)
    assert (await _usage(http, token))["memory_mb"] == 300


async def test_tasks_and_sandboxes_quotas(server: RunningServer, http: httpx.AsyncClient) -> None:
    vm = {"type": "vm:create", "payload": {"name": "box"}}
    busy, boxed = unique("tenant"), unique("tenant")
    busy_token, boxed_token = server.mint("admin", busy), server.mint("admin", boxed)
    await _set_limits(http, server, busy, tasks=2)
    await _set_limits(http, server, boxed, sandboxes=1)
    for token in (busy_token, busy_token, boxed_token):
        response = await http.post("/api/v1/tasks", json=vm, headers=bearer(token))
        assert response.status_code == 201, response.text

    _refused(
        await http.post("/api/v1/tasks", json=vm, headers=bearer(busy_token)), "tasks", 2, 2, 1
    )
    _refused(
        await http.post("/api/v1/tasks", json=vm, headers=bearer(boxed_token)), "sandboxes", 1, 1, 1
    )
    for token, count in ((busy_token, 2), (boxed_token, 1)):  # nothing changed
        tasks = await http.get("/api/v1/tasks", headers=bearer(token))
        assert len(tasks.json()) == count, tasks.text
        sandboxes = await http.get("/api/v1/sandboxes", headers=bearer(token))
        assert len(sandboxes.json()) == count, sandboxes.text
    assert (await _usage(http, busy_token))["tasks"] == 2


async def test_artifact_bytes_quota_at_upload(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant = unique("tenant")
    token = server.mint("admin", tenant)
    await _set_limits(http, server, tenant, artifact_bytes=1000)
    await upload_random(http, token, size=600)
    data = os.urandom(500)
    refused = await http.post(
        "/api/v1/artifacts",
        content=data,
        headers={**bearer(token), DIGEST_HEADER: sha256_of(data)},
    )
    _refused(refused, "artifact_bytes", 1000, 600, 500)
    head = await http.head(f"/api/v1/artifacts/{sha256_of(data)}", headers=bearer(token))
    assert head.status_code == 404
    assert (await _usage(http, token))["artifact_bytes"] == 600


async def test_limits_routes_per_role_and_tenant(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant, other = unique("tenant"), unique("tenant")
    admin, operator = server.mint("admin", tenant), server.mint("operator", tenant)
    server.mint("admin", other)
    path = f"/api/v1/tenants/{tenant}/limits"

    body = await _set_limits(http, server, tenant, instances=5, rate_per_minute=5000)
    assert body["tenant"] == tenant
    assert body["configured"]["instances"] == 5 and body["configured"]["cpu"] is None
    assert body["effective"]["rate_per_minute"] == 5000
    assert body["effective"]["cpu"] is None  # no cluster default: unlimited

    own = await http.get(path, headers=bearer(admin))  # a tenant admin reads its own
    assert own.status_code == 200 and own.json()["configured"]["instances"] == 5
    mine = await http.get("/api/v1/limits", headers=bearer(admin))
    assert mine.status_code == 200 and mine.json()["tenant"] == tenant
    changed = await http.put(path, json={"instances": 500}, headers=bearer(admin))
    assert changed.status_code == 403 and changed.json()["code"] == "forbidden"
    for method in ("GET", "PUT"):
        answer = await http.request(
            method, f"/api/v1/tenants/{other}/limits", json={}, headers=bearer(admin)
        )
        assert answer.status_code == 404 and answer.json()["code"] == "not_found", answer.text
    for url in (path, "/api/v1/limits"):
        assert (await http.get(url, headers=bearer(operator))).status_code == 403
    missing = await http.get(
        "/api/v1/tenants/no-such-tenant/limits", headers=bearer(server.admin_token)
    )
    assert missing.status_code == 404
    bad = await http.put(
        path, json={"rate_per_minute": 10, "burst": 20}, headers=bearer(server.admin_token)
    )
    assert bad.status_code == 400 and bad.json()["code"] == "bad_request"
    reset = await _set_limits(http, server, tenant)
    assert reset["configured"]["instances"] is None

"""Idempotency-Key on every mutating call (one middleware), beyond deployments."""

from __future__ import annotations

import asyncio
import re
import uuid

import httpx

from aether.model.app import AppSpec
from tests.support.api import (
    assert_envelope,
    bearer,
    deploy,
    spec_for,
    unique,
    upload_random,
)
from tests.support.server import RunningServer


async def _app_with_a_deployment(server: RunningServer, http: httpx.AsyncClient) -> str:
    app = unique("idem")
    digest = await upload_random(http, server.admin_token)
    assert (await deploy(http, server.admin_token, app, digest, instances=0)).status_code == 201
    return app


async def test_scale_with_a_key_runs_once_and_replays(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = await _app_with_a_deployment(server, http)
    headers = bearer(server.admin_token) | {"Idempotency-Key": uuid.uuid4().hex}
    first = await http.post(f"/api/v1/apps/{app}/scale", json={"instances": 0}, headers=headers)
    assert first.status_code == 200
    assert "idempotent-replay" not in first.headers
    # someone else scales in between; the replay must not undo it
    other = await http.post(
        f"/api/v1/apps/{app}/scale", json={"instances": 0}, headers=bearer(server.admin_token)
    )
    assert other.status_code == 200
    again = await http.post(f"/api/v1/apps/{app}/scale", json={"instances": 0}, headers=headers)
    assert again.status_code == 200
    assert again.headers["idempotent-replay"] == "true"
    assert again.json() == first.json()
    assert again.headers["x-trace-id"]  # replays still carry a trace id

    changed = await http.post(f"/api/v1/apps/{app}/scale", json={"instances": 1}, headers=headers)
    err = assert_envelope(changed, 409, "conflict")
    assert "different request body" in err["message"]


async def test_key_order_in_the_json_body_does_not_matter(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = await _app_with_a_deployment(server, http)
    headers = bearer(server.admin_token) | {
        "Idempotency-Key": uuid.uuid4().hex,
        "Content-Type": "application/json",
    }
    url = f"/api/v1/apps/{app}/rollback"
    first = await http.post(url, content=b'{"version": 1, "reason": null}', headers=headers)
    again = await http.post(url, content=b'{"reason":null,"version":1}', headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replay"] == "true"
    assert first.json()["id"] == again.json()["id"]


async def test_keys_are_per_tenant(server: RunningServer, http: httpx.AsyncClient) -> None:
    key = uuid.uuid4().hex
    mine = await _app_with_a_deployment(server, http)
    other_admin = server.new_tenant()
    digest = await upload_random(http, other_admin)
    theirs = unique("idem")
    ok = await deploy(http, other_admin, theirs, digest, instances=0, key=key)
    assert ok.status_code == 201
    same_key = await http.post(
        f"/api/v1/apps/{mine}/scale",
        json={"instances": 0},
        headers=bearer(server.admin_token) | {"Idempotency-Key": key},
    )
    assert same_key.status_code == 200
    assert "idempotent-replay" not in same_key.headers


async def test_every_mutating_route_takes_a_key_without_breaking_its_errors(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    """With a key, no token → 401 and a bad body → the route's own answer, never a 500."""
    spec = (await http.get("/openapi.json")).json()
    admin = server.new_tenant()  # some routes act on the caller's own token (rotation)
    checked = 0
    for path, operations in spec["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        concrete = re.sub(r"\{[^}]+\}", "nothing-here", path)
        for method in operations:
            if method.upper() not in ("POST", "PUT", "PATCH", "DELETE") or path == "/api/v1/gc":
                continue  # (gc takes no body: it would collect for real on the shared server)
            key = {"Idempotency-Key": uuid.uuid4().hex}
            anonymous = await http.request(method.upper(), concrete, headers=key)
            if path.startswith("/api/v1/auth/"):  # signing in: no token needed, its own 400
                assert_envelope(anonymous, 400, "bad_request")
            else:
                assert_envelope(anonymous, 401, "unauthorized")
            authed = await http.request(
                method.upper(),
                concrete,
                headers=key | bearer(admin) | {"Content-Type": "application/json"},
                content=b'{"not": "what this route wants"',
            )
            assert authed.status_code < 500, (method, path, authed.status_code)
            if authed.status_code >= 400:
                assert set(authed.json()) == {"code", "message", "trace_id"}
            checked += 1
    assert checked >= 15


async def _forget_answer(server: RunningServer, scoped: str) -> None:
    """What a server that died after the handler ran, before it stored the answer, leaves.

    (The middleware stores the answer after sending it: wait for it, then drop it.)
    """
    from sqlalchemy import delete

    from aether.store.records.schema import IdempotencyKey

    records = server.ctx.records

    async def forget() -> int:
        async with records.sessions() as session:
            result = await session.execute(
                delete(IdempotencyKey).where(IdempotencyKey.key == scoped)
            )
            await session.commit()
            return int(result.rowcount)  # type: ignore[attr-defined]

    for _ in range(100):
        if await asyncio.to_thread(server.run, forget()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the answer to {scoped!r} was never stored")


async def _versions(http: httpx.AsyncClient, server: RunningServer, app: str) -> list[int]:
    listed = await http.get(f"/api/v1/apps/{app}/deployments", headers=bearer(server.admin_token))
    return sorted(d["version"] for d in listed.json())


async def test_a_deploy_whose_answer_was_lost_is_not_made_twice(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    """The CLI retries a deploy with the same key when the server died mid-request;
    the deployment row carries the key, so the retry answers with that deployment."""
    app = unique("lost-answer")
    digest = await upload_random(http, server.admin_token)
    key = uuid.uuid4().hex
    first = await deploy(http, server.admin_token, app, digest, instances=0, key=key)
    assert first.status_code == 201
    await _forget_answer(server, f"POST /api/v1/apps/{app}/deployments {key}")
    again = await deploy(http, server.admin_token, app, digest, instances=0, key=key)
    assert again.status_code == 201
    assert "idempotent-replay" not in again.headers  # the handler ran, and found its work
    assert again.json()["id"] == first.json()["id"]
    assert await _versions(http, server, app) == [1]
    # another key is another deploy
    other = await deploy(http, server.admin_token, app, digest, instances=0, key=uuid.uuid4().hex)
    assert other.json()["version"] == 2


async def test_a_deploy_that_died_before_its_blueprint_is_finished_by_the_retry(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    """The server wrote the deployment row and died before the blueprint: the retry
    with the same key makes that deployment the blueprint instead of another one."""
    app = unique("half-done")
    digest = await upload_random(http, server.admin_token)
    assert (await deploy(http, server.admin_token, app, digest, instances=0)).status_code == 201
    key = uuid.uuid4().hex
    scoped = f"POST /api/v1/apps/{app}/deployments {key}"
    records = server.ctx.records
    spec = AppSpec.model_validate(spec_for(app) | {"name": app}).model_dump(mode="json")

    async def half_done() -> int:
        tenant = (await records.authenticate(server.admin_token)).tenant_id  # type: ignore[union-attr]
        row = await records.get_or_create_app(tenant, app)
        dep, created = await records.create_deployment(
            tenant, row, digest=digest, spec=spec, instances=0, request_key=scoped
        )
        assert created
        return dep.version

    version = await asyncio.to_thread(server.run, half_done())
    assert version == 2
    retried = await deploy(http, server.admin_token, app, digest, instances=0, key=key)
    assert retried.status_code == 201
    assert retried.json()["version"] == 2
    assert await _versions(http, server, app) == [1, 2]
    blueprint = await http.get(f"/api/v1/blueprints/{app}", headers=bearer(server.admin_token))
    assert blueprint.json()["version"] == 2

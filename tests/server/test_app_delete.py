"""``DELETE /api/v1/apps/{app}``: who may, what it removes, what it keeps, and after."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from aether.server.services.gc import collect_garbage
from tests.support.api import (
    assert_envelope,
    bearer,
    deploy,
    sha256_of,
    unique,
    upload,
    upload_random,
)
from tests.support.server import RunningServer, running_server


async def _deployed(http: httpx.AsyncClient, token: str, instances: int = 0) -> tuple[str, str]:
    """A fresh app with one deployment; (app, digest)."""
    app = unique("gone")
    digest = await upload_random(http, token)
    response = await deploy(http, token, app, digest, instances=instances)
    assert response.status_code == 201, response.text
    return app, digest


async def _listed(http: httpx.AsyncClient, token: str) -> set[str]:
    response = await http.get("/api/v1/apps", headers=bearer(token))
    assert response.status_code == 200, response.text
    return {a["name"] for a in response.json()}


@pytest.mark.parametrize("role", ["admin", "operator"])
async def test_operator_and_admin_delete_their_app(
    server: RunningServer, http: httpx.AsyncClient, role: str
) -> None:
    tenant = unique("tenant")
    token = server.mint(role, tenant)
    app, _ = await _deployed(http, token)
    first = (await http.get(f"/api/v1/apps/{app}/deployments", headers=bearer(token))).json()[0]

    response = await http.delete(f"/api/v1/apps/{app}", headers=bearer(token))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["app"] == app and body["version"] == 1 and body["forced"] is False
    assert body["deleted_at"]

    assert app not in await _listed(http, token)
    for path in (f"/api/v1/apps/{app}", f"/api/v1/apps/{app}/deployments"):
        assert_envelope(await http.get(path, headers=bearer(token)), 404, "not_found")
    assert_envelope(
        await http.get(f"/api/v1/blueprints/{app}", headers=bearer(token)), 404, "not_found"
    )
    # the records keep the deployment, marked, with the deletion in its timeline
    kept = await http.get(f"/api/v1/deployments/{first['id']}", headers=bearer(token))
    assert kept.status_code == 200, kept.text
    assert kept.json()["status"] == "deleted"
    assert [e["type"] for e in kept.json()["events"]][-1] == "deleted"
    # deleted twice: there is nothing left to delete
    again = await http.delete(f"/api/v1/apps/{app}", headers=bearer(token))
    assert_envelope(again, 404, "not_found")


async def test_a_viewer_may_not_delete(server: RunningServer, http: httpx.AsyncClient) -> None:
    tenant = unique("tenant")
    app, _ = await _deployed(http, server.mint("operator", tenant))
    viewer = server.mint("viewer", tenant)
    assert_envelope(
        await http.delete(f"/api/v1/apps/{app}", headers=bearer(viewer)), 403, "forbidden"
    )
    assert app in await _listed(http, viewer)


@pytest.mark.parametrize("role", ["admin", "operator"])
async def test_another_tenants_app_is_not_found(
    server: RunningServer, http: httpx.AsyncClient, role: str
) -> None:
    owner = server.mint("operator", unique("tenant"))
    app, _ = await _deployed(http, owner)
    stranger = server.mint(role, unique("tenant"))
    theirs = await http.delete(f"/api/v1/apps/{app}", headers=bearer(stranger))
    never = await http.delete(f"/api/v1/apps/{app}x", headers=bearer(stranger))
    assert_envelope(theirs, 404, "not_found")
    assert_envelope(never, 404, "not_found")
    # the same answer as for a name nobody has: no hint that it exists
    assert theirs.json()["message"] == never.json()["message"].replace(f"{app}x", app)
    assert app in await _listed(http, owner)
    blueprint = await http.get(f"/api/v1/blueprints/{app}", headers=bearer(owner))
    assert blueprint.status_code == 200


async def test_bad_name_is_bad_request(server: RunningServer, http: httpx.AsyncClient) -> None:
    response = await http.delete("/api/v1/apps/Not_A_Name", headers=bearer(server.admin_token))
    assert_envelope(response, 400, "bad_request")


async def test_a_running_rollout_is_a_conflict_unless_forced(tmp_path: Path) -> None:
    with running_server(tmp_path) as srv:  # no nodes: the second rollout never finishes
        admin = srv.admin_token
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as http:
            app, _ = await _deployed(http, admin, instances=1)
            second = await deploy(http, admin, app, await upload_random(http, admin))
            assert second.status_code == 201, second.text
            bp = (await http.get(f"/api/v1/blueprints/{app}", headers=bearer(admin))).json()
            assert bp["previous"] is not None  # v1 → v2 is rolling out

            refused = await http.delete(f"/api/v1/apps/{app}", headers=bearer(admin))
            assert_envelope(refused, 409, "conflict")
            assert "--force" in refused.json()["message"]
            still = await http.get(f"/api/v1/blueprints/{app}", headers=bearer(admin))
            assert still.status_code == 200 and still.json()["version"] == 2

            forced = await http.delete(
                f"/api/v1/apps/{app}", params={"force": "true"}, headers=bearer(admin)
            )
            assert forced.status_code == 200, forced.text
            assert forced.json()["forced"] is True and forced.json()["version"] == 2
            gone = await http.get(f"/api/v1/blueprints/{app}", headers=bearer(admin))
            assert_envelope(gone, 404, "not_found")
            assert app not in await _listed(http, admin)


async def test_the_name_deploys_again_with_the_next_version(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    token = server.mint("operator", unique("tenant"))
    app, digest = await _deployed(http, token)
    assert (await http.delete(f"/api/v1/apps/{app}", headers=bearer(token))).status_code == 200

    again = await deploy(http, token, app, digest, instances=0)
    assert again.status_code == 201, again.text
    assert again.json()["version"] == 2  # numbers are never reused
    listed = (await http.get(f"/api/v1/apps/{app}", headers=bearer(token))).json()
    assert listed["version"] == 2
    history = (await http.get(f"/api/v1/apps/{app}/deployments", headers=bearer(token))).json()
    assert [(d["version"], d["status"]) for d in history][1] == (1, "deleted")
    # a plain rollback stays in the app's new life: nothing before the deletion
    back = await http.post(f"/api/v1/apps/{app}/rollback", json={}, headers=bearer(token))
    assert_envelope(back, 409, "conflict")


async def test_deleting_an_app_leaves_another_tenant_s_app_of_the_name(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    first = server.mint("operator", unique("tenant"))
    app, _ = await _deployed(http, first)
    second = server.mint("operator", unique("tenant"))
    mine = await deploy(http, second, app, await upload_random(http, second), instances=0)
    assert mine.status_code == 201, mine.text  # an app name is its tenant's own
    assert (await http.delete(f"/api/v1/apps/{app}", headers=bearer(first))).status_code == 200
    assert app not in await _listed(http, first)
    assert app in await _listed(http, second)
    kept = await http.get(f"/api/v1/blueprints/{app}", headers=bearer(second))
    assert kept.json()["deployment_id"] == mine.json()["id"]


async def test_gc_deletes_the_artifacts_only_the_deleted_app_used(tmp_path: Path) -> None:
    with running_server(tmp_path, gc_grace_seconds=0) as srv:
        admin = srv.admin_token
        other = srv.mint("operator", unique("tenant"))
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as http:
            app, own = await _deployed(http, admin)
            shared = await upload_random(http, admin)  # another app of the tenant uses it
            crossed = os.urandom(512)  # another tenant deploys the same bytes
            assert (await upload(http, admin, crossed)).status_code == 201
            assert (await upload(http, other, crossed)).status_code == 201
            for token, name, digest in (
                (admin, app, shared),
                (admin, unique("keeper"), shared),
                (admin, app, sha256_of(crossed)),
                (other, unique("theirs"), sha256_of(crossed)),
            ):
                assert (await deploy(http, token, name, digest, instances=0)).status_code == 201

            before = srv.run(collect_garbage(srv.ctx, dry_run=True))
            assert before.deleted_artifacts == []  # all kept for a rollback
            deleted = await http.delete(f"/api/v1/apps/{app}", headers=bearer(admin))
            assert deleted.status_code == 200, deleted.text
            result = srv.run(collect_garbage(srv.ctx))
            assert result.deleted_artifacts == [own]
            assert result.deleted_claims == 1  # what another tenant runs stays, claims too
            for token, digest, status in (
                (admin, own, 404),
                (admin, shared, 200),
                (other, sha256_of(crossed), 200),
            ):
                head = await http.head(f"/api/v1/artifacts/{digest}", headers=bearer(token))
                assert head.status_code == status, digest


async def test_deployments_show_the_current_count_after_a_scale(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    token = server.mint("operator", unique("tenant"))
    app, digest = await _deployed(http, token, instances=0)
    second = await deploy(http, token, app, digest, instances=0)
    assert second.status_code == 201
    scaled = await http.post(
        f"/api/v1/apps/{app}/scale", json={"instances": 3}, headers=bearer(token)
    )
    assert scaled.status_code == 200, scaled.text
    listed = (await http.get(f"/api/v1/apps/{app}/deployments", headers=bearer(token))).json()
    assert [(d["version"], d["instances"]) for d in listed] == [(2, 3), (1, 0)]

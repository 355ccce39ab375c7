"""Retention and garbage collection against a real server."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.server.conftest import running_server
from tests.server.support import bearer, deploy, upload_random


async def test_gc_keeps_the_last_k_and_what_serves(tmp_path: Path) -> None:
    with running_server(tmp_path, retain_deployments=2, gc_grace_seconds=0) as srv:
        admin = bearer(srv.admin_token)
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as http:
            digests = []
            for _ in range(4):
                digest = await upload_random(http, srv.admin_token)
                response = await deploy(http, srv.admin_token, "retained", digest, instances=0)
                assert response.status_code == 201, response.text
                digests.append(digest)
            young = await upload_random(http, srv.admin_token)  # not deployed yet

            dry = (await http.post("/api/v1/gc", params={"dry_run": "true"}, headers=admin)).json()
            assert dry["dry_run"] is True
            assert sorted(dry["deleted_artifacts"]) == sorted([*digests[:2], young])
            for digest in digests:  # a dry run deletes nothing
                assert (
                    await http.head(f"/api/v1/artifacts/{digest}", headers=admin)
                ).status_code == 200

            # a rollback target is what rollback would deploy: keep v3 by rolling back to it
            result = (await http.post("/api/v1/gc", headers=admin)).json()
            assert sorted(result["deleted_artifacts"]) == sorted([*digests[:2], young])
            assert result["kept_artifacts"] == 2
            for digest in digests[:2]:
                assert (
                    await http.head(f"/api/v1/artifacts/{digest}", headers=admin)
                ).status_code == 404
            for digest in digests[2:]:
                assert (
                    await http.head(f"/api/v1/artifacts/{digest}", headers=admin)
                ).status_code == 200

            # rolling back to a collected version is refused with a clear message
            refused = await http.post(
                "/api/v1/apps/retained/rollback", json={"version": 1}, headers=admin
            )
            assert refused.status_code == 400
            assert "not in the registry" in refused.json()["message"]
            ok = await http.post(
                "/api/v1/apps/retained/rollback", json={"version": 3}, headers=admin
            )
            assert ok.status_code == 201, ok.text


async def test_gc_never_deletes_the_serving_artifact(tmp_path: Path) -> None:
    with running_server(tmp_path, retain_deployments=1, gc_grace_seconds=0) as srv:
        admin = bearer(srv.admin_token)
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as http:
            old = await upload_random(http, srv.admin_token)
            assert (
                await deploy(http, srv.admin_token, "pinned", old, instances=0)
            ).status_code == 201
            new = await upload_random(http, srv.admin_token)
            assert (
                await deploy(http, srv.admin_token, "pinned", new, instances=0)
            ).status_code == 201
            # roll back: v3 reuses the old artifact, which is now the serving one
            back = await http.post(
                "/api/v1/apps/pinned/rollback", json={"version": 1}, headers=admin
            )
            assert back.status_code == 201
            result = (await http.post("/api/v1/gc", headers=admin)).json()
            assert result["deleted_artifacts"] == [new]
            assert (await http.head(f"/api/v1/artifacts/{old}", headers=admin)).status_code == 200


async def test_gc_needs_admin(server: object, http: httpx.AsyncClient) -> None:
    from tests.server.conftest import RunningServer

    assert isinstance(server, RunningServer)
    viewer = server.token("viewer")
    response = await http.post("/api/v1/gc", headers=bearer(viewer))
    assert response.status_code == 403

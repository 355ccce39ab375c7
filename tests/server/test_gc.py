"""Retention and garbage collection against a real server."""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from aether.artifacts.blobs import TenantBlobs
from aether.server.services.gc import collect_garbage
from aether.store.records import DEFAULT_TENANT
from aether.tasks.queue import NewTask
from tests.support.api import bearer, deploy, sha256_of, upload_random
from tests.support.server import running_server


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
    from tests.support.server import RunningServer

    assert isinstance(server, RunningServer)
    viewer = server.token("viewer")
    response = await http.post("/api/v1/gc", headers=bearer(viewer))
    assert response.status_code == 403


async def test_gc_deletes_idle_blobs_and_orphaned_temp_files(tmp_path: Path) -> None:
    with running_server(tmp_path, gc_grace_seconds=60) as srv:
        admin = bearer(srv.admin_token)
        data = os.urandom(200)
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as http:
            put = await http.put(f"/api/v1/blobs/{sha256_of(data)}", content=data, headers=admin)
            assert put.status_code == 201, put.text
            principal = srv.run(srv.ctx.records.authenticate(srv.admin_token))
            assert principal is not None
            store = srv.ctx.blobs.for_tenant(principal.tenant_id)
            assert isinstance(store, TenantBlobs)
            orphan = store.root / "tmp" / "upload-crashed.tmp"  # a crash mid-upload
            orphan.write_bytes(b"half")

            now = time.time()
            fresh = srv.run(collect_garbage(srv.ctx, now=now))
            assert (fresh.deleted_blobs, fresh.aborted_uploads) == (0, 0)
            later = srv.run(collect_garbage(srv.ctx, now=now + 2 * 3600))
            assert (later.deleted_blobs, later.aborted_uploads) == (1, 1)
            assert not orphan.exists()
            missing = await http.post(
                "/api/v1/blobs/missing", json={"digests": [sha256_of(data)]}, headers=admin
            )
            assert missing.json() == {"missing": [sha256_of(data)]}
            result = (await http.post("/api/v1/gc", headers=admin)).json()
            assert (result["deleted_blobs"], result["aborted_uploads"]) == (0, 0)


async def test_artifacts_total_is_cached_between_scrapes_and_refreshed_by_gc(
    tmp_path: Path,
) -> None:
    with running_server(tmp_path, gc_grace_seconds=0) as srv:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as http:

            async def artifacts_total() -> float:
                text = (await http.get("/metrics")).text
                found = re.search(r"^artifacts_total (\S+)$", text, re.MULTILINE)
                assert found is not None
                return float(found.group(1))

            await upload_random(http, srv.admin_token)
            assert await artifacts_total() == 1  # an upload here refreshes the count
            # an artifact stored behind this server's back (as by another server on one bucket)
            other = os.urandom(300)

            async def store_elsewhere() -> None:
                async def body() -> AsyncIterator[bytes]:
                    yield other

                await srv.ctx.registry.write_stream(body(), sha256_of(other))

            srv.run(store_elsewhere())
            assert await artifacts_total() == 1  # not listed again within the minute
            await upload_random(http, srv.admin_token)
            assert await artifacts_total() == 3  # an upload through this server recounts
            result = (await http.post("/api/v1/gc", headers=bearer(srv.admin_token))).json()
            assert len(result["deleted_artifacts"]) == 2  # the unclaimed one has no record
            assert await artifacts_total() == 1  # recounted after gc: only the other one
            srv.app.state.metrics.artifacts_refresh_seconds = 0.0
            srv.run(srv.ctx.registry.delete(sha256_of(other)))
            assert await artifacts_total() == 0


async def test_gc_trims_the_task_event_log_to_the_resume_limit(tmp_path: Path) -> None:
    with running_server(tmp_path, events_resume_limit=2) as srv:
        queue = srv.ctx.queue
        for _ in range(5):
            srv.run(queue.submit(DEFAULT_TENANT, NewTask(type="job:run")))
        head = srv.run(queue.events_head())
        assert len(srv.run(queue.events_after(0, 100))) == 5

        dry = srv.run(collect_garbage(srv.ctx, dry_run=True))
        assert dry.trimmed_task_events == 0 and len(srv.run(queue.events_after(0, 100))) == 5
        done = srv.run(collect_garbage(srv.ctx))
        assert done.trimmed_task_events == 3
        kept = srv.run(queue.events_after(0, 100))
        assert [e.position for e in kept] == [head - 1, head]  # what a resume may still ask

"""Servers behind one S3 bucket share incremental-upload blobs; gc keeps the bucket tidy.

Two real in-process servers, each with its own data directory, on one bucket and
one records database (the first server's SQLite file), like an HA layout without
the extra processes: blobs sent through one assemble on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aether.artifacts.blobs import S3BlobStore
from aether.artifacts.s3 import S3ArtifactRegistry
from aether.artifacts.sync import assemble_artifact, missing_blobs, upload_blob, upload_incremental
from aether.client import ApiClient
from aether.server.services.gc import collect_garbage
from tests.server.test_incremental import make_app, packed
from tests.support.api import bearer, sha256_of
from tests.support.s3 import S3Server, s3_server_process
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server_process(tmp_path_factory.mktemp("s3-shared") / "root") as server:
        yield server


def s3_settings(s3: S3Server, bucket: str) -> dict[str, Any]:
    return {
        "artifacts_url": f"s3://{bucket}/aether",
        "s3_endpoint_url": s3.endpoint_url,
        "s3_access_key": s3.access_key,
        "s3_secret_key": s3.secret_key,
    }


@contextlib.contextmanager
def two_servers(
    tmp_path: Path, s3: S3Server, **extra: Any
) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Servers A and B on one bucket and one records database.

    (Each keeps its own state store: the SQLite one belongs to one process; the
    blob and artifact paths need only the bucket and the records.)
    """
    bucket = s3.make_bucket(f"shared-{uuid.uuid4().hex[:12]}")
    first, second = tmp_path / "a", tmp_path / "b"
    shared = {
        **s3_settings(s3, bucket),
        "records_url": f"sqlite:///{first / 'records.db'}",
        **extra,
    }
    with running_server(first, **shared) as a:
        second.mkdir()
        for name in ("admin.token", "join.token"):  # B finds the tokens already minted
            shutil.copy(first / name, second / name)
        with running_server(second, **shared) as b:
            yield a, b


def test_blobs_sent_through_one_server_assemble_on_another(
    tmp_path: Path, s3_server: S3Server
) -> None:
    root = make_app(tmp_path / "shared-app", files=6)
    digest, plan, archive = packed(root, tmp_path / "v1.tar.gz")
    with two_servers(tmp_path / "servers", s3_server) as (a, b):
        assert isinstance(a.ctx.blobs, S3BlobStore) and isinstance(b.ctx.blobs, S3BlobStore)

        async def scenario() -> None:
            async with (
                ApiClient(a.base_url, a.admin_token) as via_a,
                ApiClient(b.base_url, b.admin_token) as via_b,
            ):
                wanted = plan.blob_digests()
                assert await missing_blobs(via_a, wanted) == wanted
                by_digest = {"sha256:" + e.sha256: root / e.path for e in plan.files()}
                for blob in wanted:
                    await upload_blob(via_a, by_digest[blob], blob)
                assert await missing_blobs(via_b, wanted) == []  # B sees A's blobs
                answer = await assemble_artifact(via_b, digest, plan)
                assert (answer["digest"], answer["duplicate"]) == (digest, False)
                assert answer["size_bytes"] == archive.stat().st_size
                for client in (via_a, via_b):
                    back = tmp_path / "back.tar.gz"
                    await client.download_artifact(digest, back)
                    assert sha256_of(back.read_bytes()) == digest

                # a change deployed through B reuses every unchanged blob sent through A
                (root / "main.py").write_text("print('v2')\n")
                digest2, plan2, archive2 = packed(root, tmp_path / "v2.tar.gz")
                second = await upload_incremental(via_b, plan2, root, digest2, archive=archive2)
                assert (second["fallback"], second["uploaded_files"]) == (None, 1)
                assert second["reused_files"] == plan2.file_count - 1

        asyncio.run(scenario())
        # no blob on either server's disk: they are in the bucket
        for server in (a, b):
            assert not [p for p in (server.data_dir / "blobs").rglob("*") if p.is_file()]
    bucket = a.ctx.settings.artifacts_url.removeprefix("s3://").split("/")[0]
    blob_dir = s3_server.root / bucket / "aether" / "blobs"
    stored = {p.name for p in blob_dir.rglob("*") if p.is_file()}
    assert stored == {e.sha256 for e in plan.files()} | {
        e.sha256 for e in packed(root, tmp_path / "v2b.tar.gz")[1].files()
    }


def test_gc_deletes_idle_s3_blobs_and_aborts_orphaned_uploads(
    tmp_path: Path, s3_server: S3Server
) -> None:
    bucket = s3_server.make_bucket(f"gc-{uuid.uuid4().hex[:12]}")
    with running_server(tmp_path / "data", **s3_settings(s3_server, bucket)) as srv:
        registry = srv.ctx.registry
        assert isinstance(registry, S3ArtifactRegistry)
        blobs = [os.urandom(100 + i) for i in range(3)]
        with httpx.Client(base_url=srv.base_url, timeout=30) as http:
            for data in blobs:
                ok = http.put(
                    f"/api/v1/blobs/{sha256_of(data)}",
                    content=data,
                    headers=bearer(srv.admin_token),
                )
                assert ok.status_code == 201, ok.text

        async def orphans() -> list[str]:
            keys = [
                registry.key(sha256_of(b"half an artifact")),
                srv.ctx.blobs.for_tenant("someone").objects.key(sha256_of(b"half a blob")),  # type: ignore[attr-defined]
            ]
            for key in keys:
                await registry.client.create_multipart_upload(Bucket=bucket, Key=key)
            return keys

        srv.run(orphans())
        now = time.time()
        young = srv.run(collect_garbage(srv.ctx, now=now))  # grace: one hour
        assert (young.deleted_blobs, young.aborted_uploads) == (0, 0)
        later = now + 2 * 3600
        dry = srv.run(collect_garbage(srv.ctx, now=later, dry_run=True))
        assert (dry.deleted_blobs, dry.aborted_uploads) == (3, 2)
        done = srv.run(collect_garbage(srv.ctx, now=later))
        assert (done.deleted_blobs, done.aborted_uploads) == (3, 2)
        with httpx.Client(base_url=srv.base_url, timeout=30) as http:
            wanted = [sha256_of(d) for d in blobs]
            left = http.post(
                "/api/v1/blobs/missing", json={"digests": wanted}, headers=bearer(srv.admin_token)
            )
            assert left.json() == {"missing": wanted}
            result = http.post("/api/v1/gc", headers=bearer(srv.admin_token)).json()
            assert (result["deleted_blobs"], result["aborted_uploads"]) == (0, 0)

"""Incremental-upload blobs in the S3 bucket (``S3BlobStore``), against a real S3 server.

The same verified-before-visible contract as the local store, per tenant, plus what
assembly and garbage collection need: staging the plan's blobs on local disk,
renewing reused blobs, deleting idle ones and clearing orphaned multipart uploads.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aether.artifacts import blobs as blobs_module
from aether.artifacts import digest_bytes
from aether.artifacts.blobs import LocalBlobStore, S3BlobStore
from aether.artifacts.s3 import MIN_PART_SIZE, S3ArtifactRegistry, S3Config
from aether.errors import BadRequestError, DigestMismatchError
from tests.support.s3 import S3Server, s3_server_process


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server_process(tmp_path_factory.mktemp("s3-blobs") / "root") as server:
        yield server


@pytest.fixture
async def registry(s3_server: S3Server) -> AsyncIterator[S3ArtifactRegistry]:
    bucket = s3_server.make_bucket(f"b-{uuid.uuid4().hex[:16]}")
    config = S3Config.from_url(
        f"s3://{bucket}/aether",
        endpoint_url=s3_server.endpoint_url,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        region=s3_server.region,
        part_size=MIN_PART_SIZE,
    )
    async with S3ArtifactRegistry(config) as reg:
        yield reg


@pytest.fixture
def store(registry: S3ArtifactRegistry, tmp_path: Path) -> S3BlobStore:
    return S3BlobStore(registry, tmp_path / "scratch", max_bytes=20 << 20, refresh_after=3600)


async def chunks(data: bytes, size: int = 64 << 10) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def bucket_files(s3_server: S3Server, registry: S3ArtifactRegistry) -> set[str]:
    root = s3_server.root / registry.config.bucket
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


async def uploads_in_progress(registry: S3ArtifactRegistry) -> list[str]:
    from botocore.exceptions import ClientError

    try:
        up = await registry.client.list_multipart_uploads(Bucket=registry.config.bucket)
    except ClientError as exc:  # rclone: NoSuchUpload for a bucket that never had one
        if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
            return []
        raise
    return [u.get("Key", "") for u in up.get("Uploads", [])]


async def test_blobs_are_verified_before_visible_under_the_tenant_prefix(
    store: S3BlobStore, registry: S3ArtifactRegistry, s3_server: S3Server
) -> None:
    tenant = store.for_tenant("t1")
    data = os.urandom(5000)
    digest = digest_bytes(data)
    wrong = digest_bytes(data + b"!")
    with pytest.raises(DigestMismatchError):
        await tenant.write_stream(chunks(data), wrong)
    big = os.urandom(MIN_PART_SIZE + 1000)  # a multipart upload, aborted on mismatch
    with pytest.raises(DigestMismatchError):
        await tenant.write_stream(chunks(big), digest_bytes(b"not it"))
    assert bucket_files(s3_server, registry) == set()  # a mismatch stores nothing
    assert await uploads_in_progress(registry) == []
    assert await tenant.missing([wrong, digest]) == [wrong, digest]

    first = await tenant.write_stream(chunks(data), digest)
    assert (first.digest, first.size_bytes, first.duplicate) == (digest, 5000, False)
    again = await tenant.write_stream(chunks(data), digest)
    assert again.duplicate is True
    hex_ = digest.removeprefix("sha256:")
    assert bucket_files(s3_server, registry) == {f"aether/blobs/t1/sha256/{hex_}"}
    # blobs are not artifacts: the registry does not list them
    assert await registry.list_digests() == []
    assert await tenant.missing([wrong, digest, wrong]) == [wrong]


async def test_tenants_do_not_see_each_others_blobs(store: S3BlobStore) -> None:
    data = b"tenant one's file"
    digest = digest_bytes(data)
    await store.for_tenant("one").write_stream(chunks(data), digest)
    assert await store.for_tenant("one").missing([digest]) == []
    assert await store.for_tenant("two").missing([digest]) == [digest]
    assert store.for_tenant("one") is store.for_tenant("one")
    for bad in ("../one", "a/b", "", "x" * 65):
        with pytest.raises(BadRequestError):
            store.for_tenant(bad)


async def test_missing_lists_many_digests_and_heads_past_a_partial_listing(
    store: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = store.for_tenant("many")
    contents = [f"file {i}".encode() for i in range(12)]
    present = [digest_bytes(c) for c in contents]
    await asyncio.gather(
        *(tenant.write_stream(chunks(c), d) for c, d in zip(contents, present, strict=True))
    )
    absent = [digest_bytes(f"absent {i}".encode()) for i in range(blobs_module._LIST_FROM)]
    wanted = [
        d for pair in zip(absent[: len(present)], present, strict=True) for d in pair
    ] + absent[len(present) :]
    assert len(wanted) >= blobs_module._LIST_FROM  # takes the listing path
    assert await tenant.missing(wanted) == absent

    # a listing cut short after a few keys: the digests past the last key get HEADs
    monkeypatch.setattr(blobs_module, "_LIST_PAGE", 3)
    monkeypatch.setattr(blobs_module, "_LIST_RATIO", 10_000)  # a budget of one page
    found, unknown = await tenant._listed(wanted)
    assert len(found) == 3 and set(found) <= set(present)
    last = max(found)
    assert unknown == [d for d in wanted if d not in found and d > last]
    assert await tenant.missing(wanted) == absent


async def test_missing_renews_reused_blobs(registry: S3ArtifactRegistry, tmp_path: Path) -> None:
    eager = S3BlobStore(registry, tmp_path, refresh_after=0)  # every reuse renews
    tenant = eager.for_tenant("renew")
    data = b"reused"
    digest = digest_bytes(data)
    await tenant.write_stream(chunks(data), digest)
    head = await registry.client.head_object(
        Bucket=registry.config.bucket, Key=tenant.objects.key(digest)
    )
    assert "touched" not in head.get("Metadata", {})
    assert await tenant.missing([digest]) == []
    head = await registry.client.head_object(
        Bucket=registry.config.bucket, Key=tenant.objects.key(digest)
    )
    assert head["Metadata"].get("touched") == "1"  # copied onto itself: LastModified is now
    body = await registry.client.get_object(
        Bucket=registry.config.bucket, Key=tenant.objects.key(digest)
    )
    assert await body["Body"].read() == data  # same bytes


async def test_staging_downloads_the_plan_blobs_and_cleans_up(
    store: S3BlobStore, tmp_path: Path
) -> None:
    tenant = store.for_tenant("stage")
    contents = [os.urandom(3000 + i) for i in range(5)]
    digests = [digest_bytes(c) for c in contents]
    for c, d in zip(contents, digests, strict=True):
        await tenant.write_stream(chunks(c), d)
    async with tenant.staged([*digests, digests[0]]) as staging:
        for c, d in zip(contents, digests, strict=True):
            with staging.open_blob(d.removeprefix("sha256:")) as f:
                assert f.read() == c
        fd, name = staging.temp_file()
        os.close(fd)
        assert Path(name).exists()
    assert list((tmp_path / "scratch").iterdir()) == []  # copies and temp file are gone

    gone = digest_bytes(b"never uploaded")
    with pytest.raises(BadRequestError) as exc:
        async with tenant.staged([digests[0], gone]):
            pass
    assert exc.value.code == "missing_blobs" and gone in exc.value.message
    assert list((tmp_path / "scratch").iterdir()) == []


async def test_housekeeping_deletes_idle_blobs_and_orphaned_uploads(
    store: S3BlobStore, registry: S3ArtifactRegistry, s3_server: S3Server
) -> None:
    artifact = os.urandom(1000)
    await registry.write_stream(chunks(artifact), digest_bytes(artifact))
    for name in ("a", "b"):
        data = f"blob of {name}".encode()
        await store.for_tenant(name).write_stream(chunks(data), digest_bytes(data))
    now = datetime.now(UTC)
    assert await store.delete_stale(now - timedelta(hours=1)) == 0
    assert await store.delete_stale(now + timedelta(hours=1), dry_run=True) == 2
    assert len(bucket_files(s3_server, registry)) == 3
    assert await store.delete_stale(now + timedelta(hours=1)) == 2
    # the artifact beside them stays
    left = bucket_files(s3_server, registry)
    assert left == {"aether/sha256/" + hashlib.sha256(artifact).hexdigest()}

    key = store.for_tenant("a").objects.key(digest_bytes(b"half-sent"))
    await registry.client.create_multipart_upload(Bucket=registry.config.bucket, Key=key)
    hour = timedelta(hours=1)
    assert await store.abort_stale_uploads(now, hour) == 0  # still young: maybe live
    assert await store.abort_stale_uploads(now + 2 * hour, hour, dry_run=True) == 1
    assert await registry.abort_stale_uploads(now + 2 * hour, hour) == 0  # not under sha256/
    assert await store.abort_stale_uploads(now + 2 * hour, hour) == 1
    assert await uploads_in_progress(registry) == []

    # an assembly a crash interrupted left its staging directory behind: swept alike
    left_over = store.scratch / "assemble-crashed"
    left_over.mkdir(parents=True)
    (left_over / "blob").write_bytes(b"half a copy")
    assert await store.abort_stale_uploads(now, hour) == 0
    assert await store.abort_stale_uploads(now + 2 * hour, hour, dry_run=True) == 1
    assert left_over.exists()
    assert await store.abort_stale_uploads(now + 2 * hour, hour) == 1
    assert not left_over.exists()


async def test_the_local_store_keeps_the_protocol(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    tenant = store.for_tenant("local")
    data = b"local blob"
    digest = digest_bytes(data)
    await tenant.write_stream(chunks(data), digest)
    async with tenant.staged([digest]) as staging:
        with staging.open_blob(digest.removeprefix("sha256:")) as f:
            assert f.read() == data
    orphan = tenant.root / "tmp" / "upload-orphan.tmp"
    orphan.write_bytes(b"half")
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    assert await store.abort_stale_uploads(now, hour) == 0
    assert await store.abort_stale_uploads(now + 2 * hour, hour) == 1
    assert not orphan.exists()
    assert await store.delete_stale(now - hour) == 0
    assert await store.delete_stale(now + hour) == 1
    assert await tenant.missing([digest]) == [digest]


async def test_a_sharing_registry_borrows_the_client_under_its_own_prefix(
    registry: S3ArtifactRegistry, s3_server: S3Server
) -> None:
    other = registry.sharing("elsewhere/sha256/", max_bytes=10)
    assert other.client is registry.client and other.max_bytes == 10
    with pytest.raises(ValueError):
        registry.sharing("/no-leading-slash/")
    data = b"0123456789"
    digest = digest_bytes(data)
    await other.write_stream(chunks(data), digest)
    assert other.key(digest) == "aether/elsewhere/sha256/" + digest.removeprefix("sha256:")
    assert await other.list_digests() == [digest] and await registry.list_digests() == []
    assert await registry.touch(digest) is False  # absent under sha256/
    await other.aclose()  # the owner's client stays open
    assert await other.exists(digest) and await registry.size(digest) is None
    await other.delete_many([digest, digest_bytes(b"absent")])
    assert bucket_files(s3_server, registry) == set()

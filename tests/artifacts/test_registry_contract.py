"""The artifact registry's contract, on every backend: the local directory and S3
(a real S3 server, ``rclone serve s3``, the tests start).

Verified before visible, nothing left behind on failure, duplicates verified but not
rewritten, bounded by the size limit, bad digests refused everywhere. What one backend
does beyond it is in test_local_registry.py and test_s3_registry.py.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from aether.artifacts import ArtifactBackend, LocalArtifactRegistry, digest_bytes
from aether.artifacts.s3 import S3ArtifactRegistry
from aether.errors import (
    BadRequestError,
    DigestMismatchError,
    NotFoundError,
    PayloadTooLargeError,
)
from tests.support.registry import (
    BIG,
    BIG_DIGEST,
    DATA,
    DIGEST,
    chunks,
    leftovers,
    read_all,
    s3_config,
)
from tests.support.s3 import S3Server


@pytest.fixture(params=["local", "s3"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, s3_server: S3Server
) -> AsyncIterator[ArtifactBackend]:
    if request.param == "local":
        yield LocalArtifactRegistry(tmp_path / "registry", max_bytes=20 << 20)
        return
    bucket = s3_server.make_bucket(f"t-{uuid.uuid4().hex[:16]}")
    async with S3ArtifactRegistry(s3_config(s3_server, bucket), max_bytes=20 << 20) as reg:
        yield reg


@pytest.mark.parametrize("data", [DATA, BIG], ids=["small", "multipart"])
async def test_write_then_read(backend: ArtifactBackend, data: bytes) -> None:
    digest = digest_bytes(data)
    assert not await backend.exists(digest)
    assert await backend.size(digest) is None
    result = await backend.write_stream(chunks(data), digest)
    assert (result.digest, result.size_bytes, result.duplicate) == (digest, len(data), False)
    assert await backend.exists(digest)
    assert await backend.size(digest) == len(data)
    assert await read_all(backend, digest) == data
    assert await backend.list_digests() == [digest]


async def test_open_chunks_respects_chunk_size(backend: ArtifactBackend) -> None:
    await backend.write_stream(chunks(DATA), DIGEST)
    sizes = [len(c) async for c in await backend.open_chunks(DIGEST, chunk_size=100_000)]
    assert sizes == [100_000, 100_000, 100_000, 3]


async def test_missing_artifact(backend: ArtifactBackend) -> None:
    with pytest.raises(NotFoundError):
        await backend.open_chunks(DIGEST)  # raised on open, before any chunk
    await backend.delete(DIGEST)  # idempotent


@pytest.mark.parametrize("data", [DATA, BIG], ids=["small", "multipart"])
async def test_duplicate_is_verified_but_not_rewritten(
    backend: ArtifactBackend, s3_server: S3Server, data: bytes
) -> None:
    digest = digest_bytes(data)
    await backend.write_stream(chunks(data), digest)
    before = await leftovers(backend, s3_server)
    again = await backend.write_stream(chunks(data, 1000), digest)
    assert (again.duplicate, again.size_bytes) == (True, len(data))
    with pytest.raises(DigestMismatchError):
        await backend.write_stream(chunks(b"not the same"), digest)
    assert await leftovers(backend, s3_server) == before
    assert await read_all(backend, digest) == data


@pytest.mark.parametrize("data", [DATA, BIG], ids=["small", "multipart"])
async def test_mismatch_leaves_nothing(
    backend: ArtifactBackend, s3_server: S3Server, data: bytes
) -> None:
    actual = digest_bytes(data)
    before = await leftovers(backend, s3_server)
    wrong = digest_bytes(b"something else")
    with pytest.raises(DigestMismatchError) as exc:
        await backend.write_stream(chunks(data), wrong)
    assert actual in exc.value.message and wrong in exc.value.message
    assert exc.value.code == "digest_mismatch"
    assert await leftovers(backend, s3_server) == before
    assert not await backend.exists(wrong)
    assert not await backend.exists(actual)
    assert await backend.list_digests() == []


async def test_size_limit_stops_the_stream_early(
    backend: ArtifactBackend, s3_server: S3Server
) -> None:
    limit = 20 << 20  # the fixture's max_bytes: more than one part
    before = await leftovers(backend, s3_server)
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"x" * (1 << 20)

    with pytest.raises(PayloadTooLargeError) as exc:
        await backend.write_stream(endless(), DIGEST)
    assert exc.value.status == 413
    assert pulled == limit // (1 << 20) + 1
    assert await leftovers(backend, s3_server) == before


async def test_failing_or_cancelled_upload_leaves_nothing(
    backend: ArtifactBackend, s3_server: S3Server
) -> None:
    before = await leftovers(backend, s3_server)

    async def broken() -> AsyncIterator[bytes]:
        yield BIG  # past the first part: a multipart upload is under way on S3
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await backend.write_stream(broken(), BIG_DIGEST)
    assert await leftovers(backend, s3_server) == before

    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield BIG
        started.set()
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(backend.write_stream(stalls(), BIG_DIGEST))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await leftovers(backend, s3_server) == before
    assert not await backend.exists(BIG_DIGEST)


async def test_concurrent_writes_of_one_digest(backend: ArtifactBackend) -> None:
    results = await asyncio.gather(
        *(backend.write_stream(chunks(DATA, 10_000, pause=True), DIGEST) for _ in range(8))
    )
    assert sorted(r.duplicate for r in results) == [False] + [True] * 7
    assert all(r.size_bytes == len(DATA) for r in results)
    assert await read_all(backend, DIGEST) == DATA


async def test_delete_and_list(backend: ArtifactBackend) -> None:
    blobs = [os.urandom(100) for _ in range(5)]
    for b in blobs:
        await backend.write_stream(chunks(b), digest_bytes(b))
    digests = sorted(digest_bytes(b) for b in blobs)
    assert await backend.list_digests() == digests
    await backend.delete(digests[0])
    assert await backend.list_digests() == digests[1:]
    assert not await backend.exists(digests[0])


@pytest.mark.parametrize("bad", ["sha256:abc", "../../etc/passwd", DIGEST.upper()])
async def test_bad_digests_are_refused_everywhere(backend: ArtifactBackend, bad: str) -> None:
    for call in (
        backend.exists(bad),
        backend.size(bad),
        backend.open_chunks(bad),
        backend.write_stream(chunks(b"x"), bad),
        backend.delete(bad),
    ):
        with pytest.raises(BadRequestError) as exc:
            await call
        assert exc.value.code == "invalid_digest"


async def test_streaming_response_can_serve_it(backend: ArtifactBackend) -> None:
    await backend.write_stream(chunks(BIG), BIG_DIGEST)
    app = FastAPI()

    @app.get("/a/{digest}")
    async def get(digest: str) -> StreamingResponse:
        return StreamingResponse(await backend.open_chunks(digest, 50_000))

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        resp = await client.get(f"/a/{BIG_DIGEST}")
    assert resp.status_code == 200
    assert resp.content == BIG

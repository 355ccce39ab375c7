"""Local content-addressed registry: verify before visible, nothing left on failure."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from aether.artifacts import ArtifactBackend, LocalArtifactRegistry, digest_bytes
from aether.errors import (
    BadRequestError,
    DigestMismatchError,
    NotFoundError,
    PayloadTooLargeError,
)

DATA = os.urandom(300_000) + b"end"
DIGEST = digest_bytes(DATA)


async def chunks(data: bytes, size: int = 64 << 10, *, pause: bool = False) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        if pause:
            await asyncio.sleep(0)
        yield data[i : i + size]


def snapshot(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture
def reg(tmp_path: Path) -> LocalArtifactRegistry:
    return LocalArtifactRegistry(tmp_path / "registry")


async def read_all(backend: ArtifactBackend, digest: str, chunk_size: int = 1 << 20) -> bytes:
    return b"".join([c async for c in await backend.open_chunks(digest, chunk_size)])


async def test_write_then_read(reg: LocalArtifactRegistry) -> None:
    assert not await reg.exists(DIGEST)
    assert await reg.size(DIGEST) is None
    result = await reg.write_stream(chunks(DATA), DIGEST)
    assert (result.digest, result.size_bytes, result.duplicate) == (DIGEST, len(DATA), False)
    assert await reg.exists(DIGEST)
    assert await reg.size(DIGEST) == len(DATA)
    hex_ = DIGEST.removeprefix("sha256:")
    assert reg.path(DIGEST) == reg.root / "sha256" / hex_[:2] / hex_
    assert reg.path(DIGEST).stat().st_mode & 0o777 == 0o444
    assert await read_all(reg, DIGEST) == DATA
    assert await reg.list_digests() == [DIGEST]
    assert os.listdir(reg.root / "tmp") == []


async def test_open_chunks_respects_chunk_size(reg: LocalArtifactRegistry) -> None:
    await reg.write_stream(chunks(DATA), DIGEST)
    sizes = [len(c) async for c in await reg.open_chunks(DIGEST, chunk_size=100_000)]
    assert sizes == [100_000, 100_000, 100_000, 3]


async def test_open_chunks_survives_delete_after_open(reg: LocalArtifactRegistry) -> None:
    await reg.write_stream(chunks(DATA), DIGEST)
    it = await reg.open_chunks(DIGEST)
    await reg.delete(DIGEST)
    assert b"".join([c async for c in it]) == DATA


async def test_missing_artifact(reg: LocalArtifactRegistry) -> None:
    with pytest.raises(NotFoundError):
        await reg.open_chunks(DIGEST)  # raised on open, before any chunk
    with pytest.raises(NotFoundError):
        reg.path(DIGEST)
    await reg.delete(DIGEST)  # idempotent


async def test_duplicate_is_verified_but_not_rewritten(reg: LocalArtifactRegistry) -> None:
    await reg.write_stream(chunks(DATA), DIGEST)
    inode = reg.path(DIGEST).stat().st_ino
    again = await reg.write_stream(chunks(DATA, 1000), DIGEST)
    assert (again.duplicate, again.size_bytes) == (True, len(DATA))
    assert reg.path(DIGEST).stat().st_ino == inode
    before = snapshot(reg.root)
    with pytest.raises(DigestMismatchError):
        await reg.write_stream(chunks(b"not the same"), DIGEST)
    assert snapshot(reg.root) == before
    assert await read_all(reg, DIGEST) == DATA


async def test_mismatch_leaves_nothing(reg: LocalArtifactRegistry) -> None:
    before = snapshot(reg.root)
    wrong = digest_bytes(b"something else")
    with pytest.raises(DigestMismatchError) as exc:
        await reg.write_stream(chunks(DATA), wrong)
    assert DIGEST in exc.value.message and wrong in exc.value.message
    assert exc.value.code == "digest_mismatch"
    assert snapshot(reg.root) == before
    assert not await reg.exists(wrong)
    assert not await reg.exists(DIGEST)


async def test_size_limit_stops_the_stream_early(tmp_path: Path) -> None:
    reg = LocalArtifactRegistry(tmp_path / "r", max_bytes=1000)
    before = snapshot(reg.root)
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"x" * 300

    with pytest.raises(PayloadTooLargeError) as exc:
        await reg.write_stream(endless(), DIGEST)
    assert exc.value.status == 413
    assert pulled == 4
    assert snapshot(reg.root) == before
    ok = await reg.write_stream(chunks(b"y" * 1000), digest_bytes(b"y" * 1000))
    assert ok.size_bytes == 1000


async def test_failing_or_cancelled_upload_leaves_nothing(reg: LocalArtifactRegistry) -> None:
    before = snapshot(reg.root)

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await reg.write_stream(broken(), DIGEST)
    assert snapshot(reg.root) == before

    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"partial"
        started.set()
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(reg.write_stream(stalls(), DIGEST))
    await started.wait()
    assert len(os.listdir(reg.root / "tmp")) == 1  # the upload in progress
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert snapshot(reg.root) == before


async def test_concurrent_writes_of_one_digest(reg: LocalArtifactRegistry) -> None:
    results = await asyncio.gather(
        *(reg.write_stream(chunks(DATA, 10_000, pause=True), DIGEST) for _ in range(12))
    )
    assert sorted(r.duplicate for r in results) == [False] + [True] * 11
    assert all(r.size_bytes == len(DATA) for r in results)
    assert await read_all(reg, DIGEST) == DATA
    assert os.listdir(reg.root / "tmp") == []


def test_concurrent_writes_from_separate_registries(tmp_path: Path) -> None:
    """Like several server processes sharing one directory, each with its own loop."""
    barrier = threading.Barrier(6)
    results: list[bool] = []
    errors: list[BaseException] = []

    def worker() -> None:
        reg = LocalArtifactRegistry(tmp_path / "shared")
        barrier.wait()
        try:
            results.append(
                asyncio.run(reg.write_stream(chunks(DATA, 4096, pause=True), DIGEST)).duplicate
            )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [False] + [True] * 5
    reg = LocalArtifactRegistry(tmp_path / "shared")
    assert reg.path(DIGEST).read_bytes() == DATA
    assert os.listdir(reg.root / "tmp") == []


async def test_delete_and_list(reg: LocalArtifactRegistry) -> None:
    blobs = [os.urandom(100) for _ in range(5)]
    for b in blobs:
        await reg.write_stream(chunks(b), digest_bytes(b))
    digests = sorted(digest_bytes(b) for b in blobs)
    assert await reg.list_digests() == digests
    await reg.delete(digests[0])
    assert await reg.list_digests() == digests[1:]
    assert not await reg.exists(digests[0])


@pytest.mark.parametrize("bad", ["sha256:abc", "../../etc/passwd", DIGEST.upper()])
async def test_bad_digests_are_refused_everywhere(reg: LocalArtifactRegistry, bad: str) -> None:
    for call in (
        reg.exists(bad),
        reg.size(bad),
        reg.open_chunks(bad),
        reg.write_stream(chunks(b"x"), bad),
        reg.delete(bad),
    ):
        with pytest.raises(BadRequestError) as exc:
            await call
        assert exc.value.code == "bad_digest"
    with pytest.raises(BadRequestError):
        reg.path(bad)


async def test_streaming_response_can_serve_it(reg: LocalArtifactRegistry) -> None:
    """The chosen iterator shape plugs straight into FastAPI's StreamingResponse."""
    await reg.write_stream(chunks(DATA), DIGEST)
    app = FastAPI()

    @app.get("/a/{digest}")
    async def get(digest: str) -> StreamingResponse:
        return StreamingResponse(await reg.open_chunks(digest, 50_000))

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        resp = await client.get(f"/a/{DIGEST}")
    assert resp.status_code == 200
    assert resp.content == DATA

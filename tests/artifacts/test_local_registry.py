"""The local registry beyond the contract (test_registry_contract.py): its files, a read
that outlives a delete, and several processes sharing one directory."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aether.artifacts import ArtifactBackend, LocalArtifactRegistry, digest_bytes
from aether.errors import BadRequestError, NotFoundError

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


async def test_files_are_content_addressed_and_read_only(reg: LocalArtifactRegistry) -> None:
    await reg.write_stream(chunks(DATA), DIGEST)
    hex_ = DIGEST.removeprefix("sha256:")
    assert reg.path(DIGEST) == reg.root / "sha256" / hex_[:2] / hex_
    assert reg.path(DIGEST).stat().st_mode & 0o777 == 0o444
    assert os.listdir(reg.root / "tmp") == []


async def test_a_duplicate_is_not_rewritten(reg: LocalArtifactRegistry) -> None:
    await reg.write_stream(chunks(DATA), DIGEST)
    inode = reg.path(DIGEST).stat().st_ino
    again = await reg.write_stream(chunks(DATA, 1000), DIGEST)
    assert (again.duplicate, again.size_bytes) == (True, len(DATA))
    assert reg.path(DIGEST).stat().st_ino == inode


async def test_an_upload_in_progress_is_one_temporary_file(reg: LocalArtifactRegistry) -> None:
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
    assert os.listdir(reg.root / "tmp") == []


async def test_concurrent_writes_leave_no_temporary_file(reg: LocalArtifactRegistry) -> None:
    results = await asyncio.gather(
        *(reg.write_stream(chunks(DATA, 10_000, pause=True), DIGEST) for _ in range(12))
    )
    assert sorted(r.duplicate for r in results) == [False] + [True] * 11
    assert os.listdir(reg.root / "tmp") == []


@pytest.mark.parametrize("bad", ["sha256:abc", "../../etc/passwd", DIGEST.upper()])
def test_a_bad_digest_has_no_path(reg: LocalArtifactRegistry, bad: str) -> None:
    with pytest.raises(BadRequestError):
        reg.path(bad)

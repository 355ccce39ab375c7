"""Artifact registry: content-addressed storage of artifact archives.

The contract that every backend keeps (local directory now, S3 later): an
artifact is visible under its digest only after the stored bytes were verified
to hash to that digest, and once visible its bytes never change. The server's
``HEAD``/``PUT``/``GET /api/v1/artifacts/{digest}`` sit directly on this.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from aether.artifacts.digest import DIGEST_PREFIX, Hasher, digest_hex, parse_digest
from aether.errors import DigestMismatchError, NotFoundError, PayloadTooLargeError

__all__ = ["ArtifactBackend", "LocalArtifactRegistry", "WriteResult", "file_chunks"]

_DEFAULT_CHUNK = 1 << 20
#: Chunks at least this big are written/hashed on a worker thread so a large
#: chunk never blocks the event loop; smaller ones are cheaper inline.
_INLINE_LIMIT = 256 << 10


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Outcome of a verified upload; ``duplicate`` means the digest was already stored."""

    digest: str
    size_bytes: int
    duplicate: bool


class ArtifactBackend(Protocol):
    """Where artifact archives live, addressed by ``sha256:<hex>`` digest.

    Every method validates its digest argument (BadRequestError code ``invalid_digest``).
    Methods are async because remote backends (S3) do network I/O for each of them.
    """

    async def exists(self, digest: str) -> bool:
        """True iff a complete, verified artifact is stored under ``digest``."""
        ...

    async def size(self, digest: str) -> int | None:
        """Byte size of the stored artifact, or None if it is absent."""
        ...

    async def open_chunks(
        self, digest: str, chunk_size: int = _DEFAULT_CHUNK
    ) -> AsyncIterator[bytes]:
        """Open the artifact now (NotFoundError now if absent), return its bytes as chunks.

        Raising before the first chunk lets an HTTP handler answer 404 instead of a
        broken 200; the returned iterator suits ``StreamingResponse`` directly.
        """
        ...

    async def write_stream(self, chunks: AsyncIterable[bytes], expected_digest: str) -> WriteResult:
        """Store the streamed bytes under ``expected_digest`` once verified.

        Guarantees: nothing is visible under the digest until the complete bytes
        hashed to it; on DigestMismatchError or PayloadTooLargeError (or cancellation)
        nothing is left behind; concurrent writes of one digest all succeed and
        exactly one stores it; a digest already present gives ``duplicate=True``.
        """
        ...

    async def delete(self, digest: str) -> None:
        """Remove the artifact; idempotent (absent is not an error)."""
        ...

    async def list_digests(self) -> list[str]:
        """All stored digests, sorted."""
        ...


class _FileChunks:
    """Async iterator over an open file that closes it when exhausted, failed or closed."""

    def __init__(self, f: IO[bytes], chunk_size: int) -> None:
        self._f = f
        self._chunk_size = chunk_size

    def __aiter__(self) -> _FileChunks:
        return self

    async def __anext__(self) -> bytes:
        if self._f.closed:
            raise StopAsyncIteration
        try:
            chunk = await asyncio.to_thread(self._f.read, self._chunk_size)
        except BaseException:
            self._f.close()
            raise
        if not chunk:
            self._f.close()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        self._f.close()


def file_chunks(path: str | Path, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
    """The bytes of the file at ``path`` as an async stream (read on a worker thread)."""
    return _FileChunks(open(path, "rb"), chunk_size)


class LocalArtifactRegistry:
    """Artifacts as read-only files at ``root/sha256/<first 2 hex>/<hex>``.

    Uploads stream into ``root/tmp/`` (same filesystem, so publishing is a link, not a
    copy) and are published with ``link()``, which fails instead of replacing: the
    first verified writer wins, later ones see ``duplicate=True``. Several processes
    may share one root. Temp files orphaned by a crash stay in ``root/tmp/`` and are
    safe to delete when no upload is running.
    """

    def __init__(self, root: Path, *, max_bytes: int = 2 << 30) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._objects = self.root / "sha256"
        self._tmp = self.root / "tmp"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    def _object_path(self, digest: str) -> Path:
        hex_ = digest_hex(digest)
        return self._objects / hex_[:2] / hex_

    def path(self, digest: str) -> Path:
        """Local file of a stored artifact (NotFoundError if absent); never write to it."""
        p = self._object_path(digest)
        if not p.is_file():
            raise NotFoundError(f"artifact {digest} not found")
        return p

    async def exists(self, digest: str) -> bool:
        return self._object_path(digest).is_file()

    async def size(self, digest: str) -> int | None:
        try:
            return self._object_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    async def open_chunks(
        self, digest: str, chunk_size: int = _DEFAULT_CHUNK
    ) -> AsyncIterator[bytes]:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        p = self._object_path(digest)
        try:
            f = open(p, "rb")  # noqa: SIM115 - closed by _FileChunks
        except FileNotFoundError:
            raise NotFoundError(f"artifact {digest} not found") from None
        return _FileChunks(f, chunk_size)

    async def write_stream(self, chunks: AsyncIterable[bytes], expected_digest: str) -> WriteResult:
        """Verify and store; a digest already present is still hashed (not written) so
        the caller learns whether *its* bytes were right, at no disk cost."""
        expected = parse_digest(expected_digest)
        final = self._object_path(expected)
        if final.is_file():
            size = await self._consume(chunks, expected, None)
            return WriteResult(expected, size, duplicate=True)

        fd, tmp_name = tempfile.mkstemp(prefix="upload-", suffix=".tmp", dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                size = await self._consume(chunks, expected, f)
                await asyncio.to_thread(_flush_and_sync, f)
            os.chmod(tmp_name, 0o444)
            duplicate = await asyncio.to_thread(_publish, tmp_name, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        return WriteResult(expected, size, duplicate=duplicate)

    async def _consume(
        self, chunks: AsyncIterable[bytes], expected: str, sink: IO[bytes] | None
    ) -> int:
        hasher = Hasher()
        async for chunk in chunks:
            if not chunk:
                continue
            if hasher.size + len(chunk) > self.max_bytes:
                raise PayloadTooLargeError(
                    f"artifact exceeds the {self.max_bytes}-byte limit of this registry"
                )
            if len(chunk) >= _INLINE_LIMIT:
                await asyncio.to_thread(_absorb, hasher, sink, chunk)
            else:
                _absorb(hasher, sink, chunk)
        actual = hasher.digest()
        if actual != expected:
            raise DigestMismatchError(
                f"uploaded bytes have digest {actual}, but {expected} was declared"
            )
        return hasher.size

    async def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._object_path(digest).unlink()

    async def list_digests(self) -> list[str]:
        return await asyncio.to_thread(self._list_sync)

    def _list_sync(self) -> list[str]:
        out: list[str] = []
        for shard in self._objects.iterdir():
            if not shard.is_dir():
                continue
            for p in shard.iterdir():
                digest = DIGEST_PREFIX + p.name
                if p.is_file() and len(p.name) == 64 and p.name[:2] == shard.name:
                    with contextlib.suppress(Exception):
                        if parse_digest(digest) == digest:  # canonical names only
                            out.append(digest)
        return sorted(out)


def _absorb(hasher: Hasher, sink: IO[bytes] | None, chunk: bytes) -> None:
    hasher.update(chunk)
    if sink is not None:
        sink.write(chunk)


def _flush_and_sync(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())


def _publish(tmp_name: str, final: Path) -> bool:
    """Make the verified temp file visible under its digest; True if someone else won."""
    final.parent.mkdir(exist_ok=True)
    try:
        os.link(tmp_name, final)
    except FileExistsError:
        return True
    dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return False


if TYPE_CHECKING:

    def _conforms(r: LocalArtifactRegistry) -> ArtifactBackend:
        return r

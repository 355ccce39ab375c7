"""Judge an archive while it uploads: ``extract.scan_archive`` fed the upload's own bytes.

The registry hashes an upload as it streams; :func:`scanned` passes the same
chunks through to it while a worker thread reads them with ``scan_archive`` (the
node's extraction rules, limits and codes, nothing written). The first hostile
entry fails the stream with its ``UnsafeArchiveError``, so the registry stores
nothing and the client hears the code at once, not after three node attempts.

Bytes that are not a complete ``tar.gz`` at all are left to the node
(``corrupt_archive`` at load): the registry stores bytes, and the scan refuses
only what would be unsafe to extract.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator

from aether.artifacts.extract import MAX_ARCHIVE_BYTES, MAX_ARCHIVE_ENTRIES, scan_archive
from aether.errors import UnsafeArchiveError

__all__ = ["scanned"]

_QUEUED_CHUNKS = 16  # at most this many chunks wait for the scanner (back-pressure)
_END = b""


class _Aborted(Exception):
    """The upload ended before the archive did (failed, cancelled): stop scanning."""


class _QueueReader:
    """A blocking, read-only file over chunks put into a queue by the event loop."""

    def __init__(self, chunks: queue.Queue[bytes | None]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()
        self._ended = False

    def read(self, size: int, /) -> bytes:
        while not self._ended and (size < 0 or len(self._buffer) < size):
            chunk = self._chunks.get()
            if chunk is None:
                raise _Aborted
            if chunk == _END:
                self._ended = True
            self._buffer += chunk
        n = len(self._buffer) if size < 0 else min(size, len(self._buffer))
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, /) -> int:
        raise OSError("an upload stream is not seekable")


class _Scan:
    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self._chunks: queue.Queue[bytes | None] = queue.Queue(_QUEUED_CHUNKS)
        self._done = asyncio.get_running_loop().create_future()
        self._finished = threading.Event()
        self.refused: UnsafeArchiveError | None = None
        self._thread = threading.Thread(
            target=self._run, args=(max_bytes, max_entries), name="archive-scan", daemon=True
        )
        self._thread.start()

    def _run(self, max_bytes: int, max_entries: int) -> None:
        loop = self._done.get_loop()
        try:
            scan_archive(_QueueReader(self._chunks), max_bytes=max_bytes, max_entries=max_entries)
        except UnsafeArchiveError as exc:
            if exc.code != "corrupt_archive":
                self.refused = exc
        except _Aborted:
            pass
        finally:
            self._finished.set()
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(_settle, self._done)
            # take what an uploader blocked on a full queue is putting, so it never hangs
            with contextlib.suppress(queue.Empty):
                while True:
                    self._chunks.get(timeout=0.5)

    async def feed(self, chunk: bytes) -> None:
        if self.refused is not None:
            raise self.refused
        if self._finished.is_set():
            return  # finished (a safe archive followed by padding, or not an archive)
        try:
            self._chunks.put_nowait(chunk)
        except queue.Full:
            await asyncio.to_thread(self._chunks.put, chunk)

    async def finish(self) -> None:
        await self.feed(_END)
        await asyncio.shield(self._done)
        if self.refused is not None:
            raise self.refused

    def abort(self) -> None:
        with contextlib.suppress(queue.Full):
            self._chunks.put_nowait(None)


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


async def scanned(
    chunks: AsyncIterable[bytes],
    *,
    max_bytes: int = MAX_ARCHIVE_BYTES,
    max_entries: int = MAX_ARCHIVE_ENTRIES,
) -> AsyncIterator[bytes]:
    """``chunks`` passed through unchanged; raises UnsafeArchiveError (the node's code)
    at the first hostile entry, and at the end if the last chunks held one."""
    scan = _Scan(max_bytes, max_entries)
    try:
        async for chunk in chunks:
            await scan.feed(chunk)
            yield chunk
        await scan.finish()
    finally:
        scan.abort()

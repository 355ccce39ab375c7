"""The upload gate: at most ``AETHER_MAX_CONCURRENT_UPLOADS`` uploads stream at once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator

from aether.server.http.prometheus import ServerMetrics, UploadKind

__all__ = ["DEFAULT_MAX_CONCURRENT_UPLOADS", "UploadGate", "UploadSlot"]

DEFAULT_MAX_CONCURRENT_UPLOADS = 32


class UploadSlot:
    """One upload's hold on the gate; ``meter`` counts the bytes it receives."""

    def __init__(self, metrics: ServerMetrics, kind: UploadKind) -> None:
        self._bytes = metrics.upload_bytes.labels(kind) if kind != "assemble" else None
        self.received = 0

    async def meter(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self.received += len(chunk)
            if self._bytes is not None:
                self._bytes.inc(len(chunk))
            yield chunk


class UploadGate:
    """At most ``limit`` uploads stream at once; the others wait their turn (FIFO)."""

    def __init__(
        self, limit: int = DEFAULT_MAX_CONCURRENT_UPLOADS, metrics: ServerMetrics | None = None
    ) -> None:
        if limit < 1:
            raise ValueError("the upload limit must be at least 1")
        self.limit = limit
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self._slots = asyncio.Semaphore(limit)

    @contextlib.asynccontextmanager
    async def slot(self, kind: UploadKind) -> AsyncIterator[UploadSlot]:
        m = self.metrics
        m.uploads_waiting.inc()
        try:
            await self._slots.acquire()
        finally:
            m.uploads_waiting.dec()
        m.uploads_in_progress.inc()
        started = time.perf_counter()
        try:
            yield UploadSlot(m, kind)
        finally:
            m.upload_duration.labels(kind).observe(time.perf_counter() - started)
            m.uploads_in_progress.dec()
            self._slots.release()
            if kind != "blob":  # blobs are not artifacts
                m.artifacts_changed()

"""Prometheus metrics of one server process, and the upload concurrency gate.

Each ``ServerMetrics`` owns its own ``CollectorRegistry`` (never the global
default), so several servers in one process (tests) keep separate numbers.
``GET /metrics`` (no token, like the probes) serves them in the text format.

Series (no label has more than a handful of values):

``artifact_upload_bytes_total{kind}``       counter: request-body bytes received by
                                            uploads; ``kind`` is ``artifact`` (whole
                                            archives) or ``blob`` (per-file contents)
``artifact_upload_duration_seconds{kind}``  histogram: time an upload held its slot;
                                            ``kind`` adds ``assemble`` (artifact
                                            assembled from blobs)
``artifact_uploads_in_progress``            gauge: uploads holding a slot now (never
                                            above ``AETHER_MAX_CONCURRENT_UPLOADS``)
``artifact_uploads_waiting``                gauge: uploads queued for a slot
``artifacts_total``                         gauge: artifacts stored in the registry,
                                            recounted at each scrape (a gauge despite
                                            the suffix: garbage collection lowers it)
``deployments_created_total``               counter: deployments and rollbacks created
``deployments_succeeded_total``             counter: deployments that became active
``deployments_failed_total``                counter: deployments marked failed

Counters are per process: the deployment outcome counters move on the server
that was leader at the time, so sum them over all servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Literal

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from aether.server.context import ServerContext

__all__ = ["DEFAULT_MAX_CONCURRENT_UPLOADS", "ServerMetrics", "UploadGate", "install_metrics"]

DEFAULT_MAX_CONCURRENT_UPLOADS = 32

UploadKind = Literal["artifact", "blob", "assemble"]
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.upload_bytes = Counter(
            "artifact_upload_bytes_total",
            "Request-body bytes received by artifact and blob uploads.",
            ["kind"],
            registry=r,
        )
        self.upload_duration = Histogram(
            "artifact_upload_duration_seconds",
            "Seconds an upload (or an assembly from blobs) held its upload slot.",
            ["kind"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.uploads_in_progress = Gauge(
            "artifact_uploads_in_progress", "Uploads holding an upload slot now.", registry=r
        )
        self.uploads_waiting = Gauge(
            "artifact_uploads_waiting",
            "Uploads waiting for a slot (AETHER_MAX_CONCURRENT_UPLOADS reached).",
            registry=r,
        )
        self.artifacts = Gauge(
            "artifacts_total",
            "Artifacts stored in the registry (a gauge, recounted at each scrape).",
            registry=r,
        )
        self.deployments_created = Counter(
            "deployments_created_total", "Deployments (and rollbacks) created.", registry=r
        )
        self.deployments_succeeded = Counter(
            "deployments_succeeded_total",
            "Deployments whose instances all became ACTIVE.",
            registry=r,
        )
        self.deployments_failed = Counter(
            "deployments_failed_total", "Deployments marked failed.", registry=r
        )
        for kind in ("artifact", "blob"):  # present at 0 from the start
            self.upload_bytes.labels(kind)
        for kind in ("artifact", "blob", "assemble"):
            self.upload_duration.labels(kind)

    async def render(self, ctx: ServerContext | None) -> bytes:
        """The exposition text, with the scrape-time gauges refreshed first."""
        if ctx is not None:
            self.artifacts.set(len(await ctx.registry.list_digests()))
        return generate_latest(self.registry)


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


def install_metrics(app: FastAPI, metrics: ServerMetrics) -> None:
    """``GET /metrics``: Prometheus text format, no token (like ``/healthz``)."""
    app.state.metrics = metrics

    @app.get("/metrics", tags=["probes"], response_class=Response)
    async def prometheus_metrics() -> Response:
        ctx: ServerContext | None = getattr(app.state, "ctx", None)
        return Response(await metrics.render(ctx), media_type=CONTENT_TYPE_LATEST)

"""Everything a request or a leader loop needs, built once at server start."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from aether.artifacts import ArtifactBackend
from aether.artifacts.blobs import BlobStore
from aether.server.metrics import ServerMetrics, UploadGate
from aether.server.settings import ServerSettings
from aether.server.telemetry import TelemetryHub
from aether.store.base import StateStore
from aether.store.election import Leadership
from aether.store.records import Records
from aether.tasks.queue.base import TaskQueue

if TYPE_CHECKING:
    from aether.server.auth import TokenCache
    from aether.server.controller import Controller
    from aether.server.logstore import LogStore
    from aether.server.risk import RiskEngine

__all__ = ["LeaderLoop", "ServerContext", "get_context"]

# A loop only the leader runs (aggregator, risk engine, controller, advisers):
# started when this server is elected, cancelled when it loses the leadership.
LeaderLoop = Callable[[Leadership], Coroutine[Any, Any, None]]


def _token_cache() -> TokenCache:
    from aether.server.auth import TokenCache  # auth imports this module

    return TokenCache()


@dataclass
class ServerContext:
    settings: ServerSettings
    server_id: str
    store: StateStore
    records: Records
    registry: ArtifactBackend  # LocalArtifactRegistry, or S3ArtifactRegistry
    logs: LogStore
    blobs: BlobStore = field(kw_only=True)  # incremental-upload blobs: local, or S3BlobStore
    metrics: ServerMetrics = field(kw_only=True)  # served at /metrics
    uploads: UploadGate = field(kw_only=True)  # AETHER_MAX_CONCURRENT_UPLOADS
    queue: TaskQueue = field(kw_only=True)  # tasks: SQL in the records DB, or Redis
    task_submitted: asyncio.Event = field(default_factory=asyncio.Event, kw_only=True)
    leader_loops: list[LeaderLoop] = field(default_factory=list, kw_only=True)
    # node telemetry: latest push per node, the per-second samples, roll-ups (leader)
    telemetry: TelemetryHub = field(default_factory=TelemetryHub, kw_only=True)
    tokens: TokenCache = field(default_factory=_token_cache, kw_only=True)  # auth cache
    controller: Controller | None = field(default=None, kw_only=True)  # layer 1 + advisers
    risk: RiskEngine | None = field(default=None, kw_only=True)  # scores nodes on the leader


async def get_context(request: Request) -> ServerContext:
    # async: FastAPI runs a plain ``def`` dependency in a worker thread, on every request
    ctx: ServerContext = request.app.state.ctx
    return ctx

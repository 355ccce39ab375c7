"""Everything a request or a leader loop needs, built once at server start."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from aether.artifacts import LocalArtifactRegistry
from aether.artifacts.blobs import LocalBlobStore
from aether.server.metrics import ServerMetrics, UploadGate
from aether.server.settings import ServerSettings
from aether.store.base import StateStore
from aether.store.records import Records
from aether.tasks.queue.base import TaskQueue

if TYPE_CHECKING:
    from aether.server.logstore import LogStore

__all__ = ["ServerContext", "get_context"]


@dataclass
class ServerContext:
    settings: ServerSettings
    server_id: str
    store: StateStore
    records: Records
    registry: LocalArtifactRegistry
    logs: LogStore
    blobs: LocalBlobStore = field(kw_only=True)  # per-file blobs of incremental uploads
    metrics: ServerMetrics = field(kw_only=True)  # served at /metrics
    uploads: UploadGate = field(kw_only=True)  # AETHER_MAX_CONCURRENT_UPLOADS
    queue: TaskQueue = field(kw_only=True)  # tasks: SQL in the records DB, or Redis
    task_submitted: asyncio.Event = field(default_factory=asyncio.Event, kw_only=True)


def get_context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx

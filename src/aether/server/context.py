"""The stores and settings a request or a leader loop works with, built once at server start.

Only stores (state, records, artifacts, blobs, queue, logs, the telemetry
window), settings and the request-side sinks shared with the loops (the
Prometheus counters, the upload gate, the token cache) live here. The leader's
loops are not in it: :mod:`aether.server.asgi` builds each loop with what it
needs and hands the others only narrow interfaces.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import Request

from aether.artifacts import ArtifactBackend
from aether.artifacts.blobs import BlobStore
from aether.server.http.prometheus import ServerMetrics
from aether.server.http.ratelimit import RateLimiter
from aether.server.http.sessions import SessionCache
from aether.server.http.token_cache import TokenCache
from aether.server.http.uploads import UploadGate
from aether.server.services.diag import DiagRequests
from aether.server.services.event_heads import EventHeads
from aether.server.services.logstore import LogStore
from aether.server.services.oidc import OidcClient
from aether.server.services.secretbox import SecretBox
from aether.server.services.telemetry import TelemetryHub
from aether.server.services.trust import ServerTrust
from aether.server.settings import ServerSettings
from aether.store.base import StateStore
from aether.store.records import Records
from aether.tasks.queue.base import TaskQueue

__all__ = ["ServerContext", "get_context"]


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
    limiter: RateLimiter = field(kw_only=True)  # requests per tenant (http/ratelimit.py)
    oidc: OidcClient = field(kw_only=True)  # single sign-on (services/oidc.py); may be off
    secrets: SecretBox = field(kw_only=True)  # seals stored secrets (services/secretbox.py)
    trust: ServerTrust = field(kw_only=True)  # the cluster CA, the node port's TLS
    task_submitted: asyncio.Event = field(default_factory=asyncio.Event, kw_only=True)
    # node telemetry: latest push per node, the per-second samples, roll-ups (leader)
    telemetry: TelemetryHub = field(default_factory=TelemetryHub, kw_only=True)
    tokens: TokenCache = field(default_factory=TokenCache, kw_only=True)  # auth cache
    sessions: SessionCache = field(default_factory=SessionCache, kw_only=True)  # console
    # the event streams' shared poll of the records' newest ids (one reader per server)
    event_heads: EventHeads = field(default_factory=EventHeads, kw_only=True)
    # ids of the tenants this server is deleting now (services/tenants.py): nothing new
    # is created in them, and a second delete of one waits for nothing: it is a 409
    tenants_deleting: set[str] = field(default_factory=set, kw_only=True)
    # diagnostics bundles waiting for nodes' parts (services/diag.py)
    diag: DiagRequests = field(default_factory=DiagRequests, kw_only=True)


async def get_context(request: Request) -> ServerContext:
    # async: FastAPI runs a plain ``def`` dependency in a worker thread, on every request
    ctx: ServerContext = request.app.state.ctx
    return ctx

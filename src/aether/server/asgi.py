"""The FastAPI application and its lifespan: open stores, bootstrap, lead."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import ASGIApp

from aether import __version__, tracing
from aether.artifacts import ArtifactBackend, LocalArtifactRegistry
from aether.artifacts.blobs import BlobStore, LocalBlobStore, S3BlobStore
from aether.artifacts.s3 import S3ArtifactRegistry
from aether.errors import ServiceUnavailableError
from aether.server.api import (
    agents,
    apps,
    artifacts,
    audit,
    auth,
    blobs,
    cluster,
    decisions,
    keys,
    limits,
    memory,
    models,
    nodes,
    plugins,
    policies,
    risk,
    runs,
    secrets,
    tasks,
    tenants,
    tokens,
    tools,
    users,
)
from aether.server.api import alerts as alerts_api
from aether.server.api import backup as backup_api
from aether.server.api import blueprints as blueprints_api
from aether.server.api import diag as diag_api
from aether.server.api import events as events_api
from aether.server.api import migrations as migrations_api
from aether.server.api import rebalance as rebalance_api
from aether.server.api import schemas as schemas_api
from aether.server.api import slices as slices_api
from aether.server.api import telemetry as telemetry_api
from aether.server.api import trust as trust_api
from aether.server.api.prometheus import install_metrics
from aether.server.console import install_console
from aether.server.context import ServerContext
from aether.server.files import make_private, private_umask
from aether.server.http.aliases import ApiAliases
from aether.server.http.audit import AuditMiddleware
from aether.server.http.errors import install_error_handlers
from aether.server.http.forward import LeaderForward
from aether.server.http.idempotency import IdempotencyMiddleware
from aether.server.http.limits import InputLimits
from aether.server.http.node_port import NodePort
from aether.server.http.openapi import install_openapi
from aether.server.http.prometheus import ServerMetrics
from aether.server.http.ratelimit import RateLimiter, RateLimitHeaders, open_storage
from aether.server.http.uploads import UploadGate
from aether.server.leader.advisers import Adviser, adviser_configs
from aether.server.leader.agents import AgentPlacer
from aether.server.leader.alerts import AlertEngine
from aether.server.leader.controller import Controller
from aether.server.leader.gc import GarbageCollector
from aether.server.leader.rebalance import Rebalancer
from aether.server.leader.reconcile import Leader, LeaderLoop
from aether.server.leader.risk import RiskEngine
from aether.server.services.agent_placements import AgentQueues
from aether.server.services.diag import follow as follow_diag
from aether.server.services.logstore import LogStore
from aether.server.services.oidc import OidcClient
from aether.server.services.presence import announce
from aether.server.services.revocations import follow_revocations
from aether.server.services.secretbox import SecretBox, key_path
from aether.server.services.telemetry import TelemetryHub
from aether.server.services.trust import ServerTrust, follow_trust, server_name
from aether.server.settings import ServerSettings
from aether.store import open_state_store
from aether.store.records import DEFAULT_TENANT, Records, open_records, upgrade_schema
from aether.tasks.queue import SqlTaskQueue, TaskQueue

__all__ = ["bootstrap_tokens", "create_asgi"]

log = logging.getLogger("aether.server")


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    os.chmod(path, 0o600)


async def bootstrap_tokens(records: Records, data_dir: Path) -> list[Path]:
    """On first start: an admin token and a join token (for nodes), written 0600."""
    tenant = await records.ensure_tenant(DEFAULT_TENANT)
    written = []
    for role, name in (("admin", "admin.token"), ("join", "join.token")):
        if not await records.has_token(role):
            token = await records.create_token(tenant.id, role, f"bootstrap {role}")
            _write_secret(data_dir / name, token)
            written.append(data_dir / name)
    return written


def _open_queue(settings: ServerSettings, sessions: async_sessionmaker[AsyncSession]) -> TaskQueue:
    if settings.queue_url:
        from aether.tasks.queue.redis import RedisTaskQueue

        return RedisTaskQueue(settings.queue_url)
    return SqlTaskQueue(sessions)


async def _expire_claims(ctx: ServerContext) -> None:
    """Claims whose node stopped heartbeating go back to the queue: no task is lost."""
    while True:
        await asyncio.sleep(1.0)
        try:
            if await ctx.queue.expire():
                ctx.task_submitted.set()
        except Exception:
            log.exception("expiring task claims failed; trying again")


async def _open_registry(settings: ServerSettings, data_dir: Path) -> ArtifactBackend:
    """The artifact registry: S3 when ``artifacts_url`` is set, else ``DATA/artifacts``."""
    if not settings.artifacts_url:
        return LocalArtifactRegistry(data_dir / "artifacts", max_bytes=settings.max_artifact_bytes)
    return await settings.s3_registry().open()  # fails the start with a clear error if unreachable


def _open_blobs(settings: ServerSettings, data_dir: Path, registry: ArtifactBackend) -> BlobStore:
    """Incremental-upload blobs beside the artifacts: in the S3 bucket (shared by every
    server behind it), else under ``DATA/blobs``."""
    if isinstance(registry, S3ArtifactRegistry):
        return S3BlobStore(
            registry,
            data_dir / "blobs" / "tmp",  # assemblies stage the plan's blobs here
            max_bytes=settings.max_artifact_bytes,
            refresh_after=settings.gc_grace_seconds / 2,
        )
    return LocalBlobStore(data_dir / "blobs", max_bytes=settings.max_artifact_bytes)


def _leader_loops(app: FastAPI, ctx: ServerContext) -> list[LeaderLoop]:
    """The leader's loops, each given what it needs: telemetry aggregation (samples each
    second, roll-ups each minute), the risk engine, the garbage collector, the rebalance
    step (unless ``rebalance_interval`` is 0), and (when enabled) the controller with its
    configured advisers. The risk engine and the
    controller are kept on ``app.state`` for the routes that read them."""
    risk = RiskEngine(ctx, registry=ctx.metrics.registry)
    app.state.risk = risk
    loops: list[LeaderLoop] = [ctx.telemetry.run, risk.run, GarbageCollector(ctx).run]
    loops.append(AgentPlacer(ctx, risk=risk).run)  # deployed agents' replicas on nodes
    loops.append(AlertEngine(ctx).run)  # alert rules, notifiers, runbooks
    if ctx.settings.rebalance_interval > 0:
        loops.append(Rebalancer(ctx).run)  # spreads instances back, one move at a time
    app.state.controller = None
    if ctx.settings.controller_enabled:
        controller = Controller(ctx, risk=risk)
        risk.on_change = controller.wake  # act on a new verdict at once
        app.state.controller = controller
        loops.append(controller.run)
        loops += [Adviser(controller, c).run for c in adviser_configs(ctx.settings)]
    return loops


class _Api(FastAPI):
    """The API, with node telemetry pushes (every node, every second: the hottest
    request by far) answered in front of every middleware; see ``TelemetryFastPath``."""

    def build_middleware_stack(self) -> ASGIApp:
        return telemetry_api.TelemetryFastPath(super().build_middleware_stack())


def create_asgi(settings: ServerSettings) -> FastAPI:
    metrics = ServerMetrics()  # per app, so servers sharing a process never mix numbers

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        exits = contextlib.AsyncExitStack()  # closed last, on shutdown
        exits.enter_context(private_umask())  # state, records, WAL, logs: 0600 / 0700
        data_dir = settings.data_dir.resolve()
        make_private(data_dir)
        records_url = settings.resolved_records_url()
        await asyncio.to_thread(upgrade_schema, records_url)
        engine, sessions = open_records(records_url)
        records = Records(sessions)
        for path in await bootstrap_tokens(records, data_dir):
            print(f"aether server: wrote {path} (mode 0600)", flush=True)
        store = await open_state_store(settings.resolved_state_url(), etcd=settings.etcd_options())
        registry = await _open_registry(settings, data_dir)
        if isinstance(registry, S3ArtifactRegistry):
            exits.push_async_callback(registry.aclose)
        secrets = SecretBox.load(key_path(data_dir, settings.secrets_key_file))
        trust = ServerTrust(settings, secrets, store, server_name(settings.api_url()))
        await trust.start()
        ctx = ServerContext(
            settings=settings,
            server_id=settings.api_url(),  # the leader key names it: followers forward there
            store=store,
            records=records,
            registry=registry,
            logs=LogStore(data_dir / "logs", max_bytes=settings.log_retention_bytes),
            blobs=_open_blobs(settings, data_dir, registry),
            metrics=metrics,
            uploads=UploadGate(settings.max_concurrent_uploads, metrics),
            queue=_open_queue(settings, sessions),
            limiter=RateLimiter(settings, records, open_storage(settings)),
            oidc=OidcClient(settings),
            secrets=secrets,
            trust=trust,
            telemetry=TelemetryHub(
                records,
                retention_days=settings.metrics_retention_days,
                window_seconds=settings.metrics_window_seconds,
            ),
        )
        app.state.ctx = ctx
        app.state.agent_queues = AgentQueues(store)  # the claim handler's cached copy
        leader = Leader(ctx, _leader_loops(app, ctx))
        app.state.leader = leader
        task = asyncio.create_task(leader.run(), name="leader")
        expiry = asyncio.create_task(_expire_claims(ctx), name="task-leases")
        node_port = await NodePort.open(app, ctx)
        app.state.node_port = node_port
        trusting = asyncio.create_task(follow_trust(trust), name="trust")
        presence = asyncio.create_task(announce(ctx), name="presence")
        revocations = asyncio.create_task(follow_revocations(ctx), name="revocations")
        diag = asyncio.create_task(follow_diag(store, ctx.diag), name="diag-requests")
        try:
            yield
        finally:
            # the nodes' port first: a heartbeat that reaches a server whose store is
            # closed is a 500, and one that finds the port closed tries another server
            await node_port.close()
            revocations.cancel()
            diag.cancel()
            trusting.cancel()
            presence.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await presence
            expiry.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.close()
            await engine.dispose()
            await exits.aclose()

    app = _Api(
        # FastAPI's own OpenTelemetry spans, one per request, a child of the caller's
        # traceparent: on when aether.tracing is (AETHER_OTLP_ENDPOINT); never for the
        # node pushes, which would be thousands a second
        telemetry={
            "tracing": tracing.enabled(),
            "metrics": False,  # Prometheus has them (/metrics)
            "logs": False,
            "exclude": telemetry_api.is_push,
        },
        title="Aether",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    # added before the trace middleware, so it runs inside it: replays carry a trace id
    app.add_middleware(IdempotencyMiddleware)
    install_error_handlers(app)
    app.add_middleware(RateLimitHeaders)  # RateLimit-* on every answer to a limited caller
    app.add_middleware(LeaderForward)  # on a follower, telemetry goes to the leader
    app.add_middleware(InputLimits, settings=settings)  # bounds all of the above
    app.add_middleware(AuditMiddleware)  # outermost: sees every answer (InputLimits' 401s too)
    install_metrics(app, metrics)
    app.add_middleware(ApiAliases)  # outermost of all: /api/agents… is /api/v1/agents…

    @app.get("/healthz", tags=["probes"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"])
    async def readyz() -> JSONResponse:
        ctx: ServerContext = app.state.ctx
        try:
            revision = await ctx.store.revision()
            async with ctx.records.sessions() as session:
                await session.execute(text("SELECT 1"))
        except Exception as exc:
            raise ServiceUnavailableError(f"not ready: {exc}") from exc
        return JSONResponse({"status": "ready", "revision": revision})

    for module in (
        auth,
        users,
        audit,
        artifacts,
        blobs,
        apps,
        nodes,
        cluster,
        keys,
        tokens,
        tenants,
        tasks,
        risk,
        decisions,
        models,
        secrets,
        tools,
        policies,
        plugins,
        agents,
        runs,
        memory,
    ):
        app.include_router(module.router, prefix="/api/v1")
    app.include_router(limits.router, prefix="/api/v1")
    app.include_router(telemetry_api.router, prefix="/api/v1")
    app.include_router(migrations_api.router, prefix="/api/v1")
    app.include_router(rebalance_api.router, prefix="/api/v1")
    app.include_router(backup_api.router, prefix="/api/v1")
    app.include_router(events_api.router, prefix="/api/v1")
    app.include_router(slices_api.router, prefix="/api/v1")
    app.include_router(trust_api.router, prefix="/api/v1")
    app.include_router(blueprints_api.router, prefix="/api/v1")
    app.include_router(alerts_api.router, prefix="/api/v1")
    app.include_router(schemas_api.router, prefix="/api/v1")
    app.include_router(diag_api.router, prefix="/api/v1")
    install_openapi(app)
    install_console(app)
    return app

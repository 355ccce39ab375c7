"""Cluster-wide views: status, blueprints, instances, endpoints."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from aether.errors import NotFoundError
from aether.model.api import InstanceOut, RetentionOut, StatusOut
from aether.model.cluster import Blueprint, Endpoint
from aether.model.names import shown_name
from aether.server.api.apps import in_cluster, instances_of, list_apps, shown_blueprint
from aether.server.api.nodes import node_list
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Caller, ClusterAdmin
from aether.server.services.cluster import read_snapshot
from aether.server.services.gc import collect_garbage
from aether.server.services.presence import live_servers
from aether.store.election import current_leader

__all__ = ["router"]

router = APIRouter(tags=["cluster"])
Ctx = Annotated[ServerContext, Depends(get_context)]


@router.get("/status")
async def status(caller: Caller, ctx: Ctx) -> StatusOut:
    return StatusOut(
        api_url=ctx.settings.api_url(),
        leader=await current_leader(ctx.store),
        revision=await ctx.store.revision(),
        nodes=await node_list(ctx),
        apps=await list_apps(caller, ctx),
        servers=await live_servers(ctx),
    )


@router.get("/settings")
async def retention(caller: Caller, ctx: Ctx) -> RetentionOut:
    """The cluster's retention figures (set by ``AETHER_*`` on the servers)."""
    s = ctx.settings
    return RetentionOut(
        retain_deployments=s.retain_deployments,
        log_retention_bytes=s.log_retention_bytes,
        metrics_window_seconds=s.metrics_window_seconds,
        metrics_retention_days=s.metrics_retention_days,
        events_resume_limit=s.events_resume_limit,
        decisions_retention_seconds=s.decisions_retention,
        snapshot_keep=s.snapshot_keep,
        gc_grace_seconds=s.gc_grace_seconds,
        audit_retention_days=s.audit_retention_days,
    )


@router.post("/gc")
async def gc(caller: ClusterAdmin, ctx: Ctx, dry_run: bool = False) -> dict[str, Any]:
    """Collect artifacts retention no longer keeps (the leader also does this periodically).

    The cluster admin's: it collects every tenant's, and its answer names them."""
    result = await collect_garbage(ctx, dry_run=dry_run)
    return asdict(result)


@router.get("/blueprints")
async def blueprints(caller: Caller, ctx: Ctx) -> list[Blueprint]:
    snap = await read_snapshot(ctx.store)
    return [
        shown_blueprint(caller, bp)
        for bp, _ in snap.blueprints.values()
        if bp.tenant == caller.tenant_id
    ]


@router.get("/blueprints/{app}")
async def blueprint(app: str, caller: Caller, ctx: Ctx) -> Blueprint:
    for bp in await blueprints(caller, ctx):
        if bp.app == app:
            return bp
    raise NotFoundError(f"no blueprint for app {app!r}")


@router.get("/instances")
async def instances(
    caller: Caller, ctx: Ctx, app: str | None = None, node: str | None = None
) -> list[InstanceOut]:
    snap = await read_snapshot(ctx.store)
    mine = {bp.app for bp, _ in snap.blueprints.values() if bp.tenant == caller.tenant_id}
    mine |= {i.app for i, _ in snap.instances.values() if i.tenant == caller.tenant_id}
    wanted = None if app is None else in_cluster(caller, app)
    out: list[InstanceOut] = []
    for name in sorted(mine):
        if wanted is None or name == wanted:
            out.extend(
                i for i in instances_of(snap, caller, name) if node is None or i.node == node
            )
    return out


@router.get("/endpoints")
async def endpoints(caller: Caller, ctx: Ctx, app: str | None = None) -> list[Endpoint]:
    snap = await read_snapshot(ctx.store)
    mine = {i.app for i, _ in snap.instances.values() if i.tenant == caller.tenant_id}
    wanted = None if app is None else in_cluster(caller, app)
    return [
        ep.model_copy(update={"app": shown_name(ep.app, caller.tenant)})
        for _, ep in sorted(snap.endpoints.items())
        if ep.app in mine and (wanted is None or ep.app == wanted)
    ]

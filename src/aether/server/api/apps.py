"""Apps, deployments, scale, rollback and logs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from aether import tracing
from aether.artifacts import parse_digest
from aether.errors import BadRequestError, ConflictError, NotFoundError
from aether.model.api import (
    AppDeletedOut,
    AppOut,
    DeploymentIn,
    DeploymentOut,
    EventOut,
    InstanceOut,
    RollbackIn,
    ScaleIn,
)
from aether.model.app import AppSpec, validate_app_name
from aether.model.cluster import Blueprint, DeploymentRef
from aether.model.names import cluster_name, route_path, shown_name
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Caller, Operator
from aether.server.http.idempotency import request_key
from aether.server.services.cluster import (
    ClusterSnapshot,
    dump,
    read_snapshot,
    remove_app,
    update_blueprint,
)
from aether.server.services.provenance import check_supply_chain
from aether.server.services.quotas import app_reservation, enforce_quota
from aether.store.records import Principal
from aether.store.records.repo import epoch
from aether.store.records.schema import App, Deployment

__all__ = [
    "deployment_out",
    "in_cluster",
    "instances_of",
    "prepare_deployment",
    "router",
    "shown_blueprint",
]

router = APIRouter(tags=["apps"])
Ctx = Annotated[ServerContext, Depends(get_context)]


_SHOWN = set(InstanceOut.model_fields) - {"key"}  # what an instance's record shows as it is


def in_cluster(caller: Principal, app: str) -> str:
    """The caller's app ``app`` by its cluster name (the state store's and the router's)."""
    return cluster_name(validate_app_name(app), caller.tenant)


def shown_blueprint(caller: Principal, bp: Blueprint) -> Blueprint:
    """The blueprint as the caller reads it: its own app by its plain name."""
    return bp.model_copy(update={"app": shown_name(bp.app, caller.tenant)})


def instances_of(
    snap: ClusterSnapshot, caller: Principal, name: str, version: int | None = None
) -> list[InstanceOut]:
    """The instances of cluster name ``name``, their app named as ``caller`` reads it."""
    return [
        InstanceOut(
            key=key,
            **{
                **inst.model_dump(mode="json", include=_SHOWN),
                "app": shown_name(inst.app, caller.tenant),
            },
        )
        for key, (inst, _) in sorted(snap.instances.items())
        if inst.app == name and (version is None or inst.version == version)
    ]


def deployment_out(app: App, dep: Deployment) -> DeploymentOut:
    return DeploymentOut(
        id=dep.id,
        app=app.name,
        version=dep.version,
        digest=dep.digest,
        instances=dep.instances,
        status=dep.status,
        rollback_of=dep.rollback_of,
        created_at=dep.created_at,
        spec=AppSpec.model_validate(dep.spec),
    )


async def _owned_blueprint(ctx: ServerContext, caller: Principal, name: str) -> Blueprint | None:
    kv = await ctx.store.get(f"blueprints/{in_cluster(caller, name)}")
    if kv is None:
        return None
    bp = Blueprint.model_validate_json(kv.value)
    return bp if bp.tenant == caller.tenant_id else None


async def _last_healthy(
    ctx: ServerContext, caller: Principal, current: Blueprint | None
) -> DeploymentRef | None:
    """What a new rollout replaces: the running rollout's own previous, else the current one."""
    if current is None:
        return None
    if current.previous is not None:
        return current.previous
    dep = await ctx.records.get_deployment(caller.tenant_id, current.deployment_id)
    return None if dep.status == "failed" else current.ref()


async def _app(ctx: ServerContext, caller: Principal, name: str) -> App:
    return await ctx.records.get_app(caller.tenant_id, validate_app_name(name))


async def _start_deployment(
    ctx: ServerContext,
    caller: Principal,
    app_name: str,
    *,
    digest: str,
    spec: AppSpec,
    instances: int,
    rollback_of: int | None = None,
    request_key: str | None = None,
) -> dict[str, Any]:
    """Record version N+1 and make it the app's blueprint.

    A retry of a request (same ``request_key``) whose answer was lost finds the
    deployment it created, makes it the blueprint if that had not happened yet,
    and answers with it: one request, one version.
    """
    out, blueprint = await prepare_deployment(
        ctx,
        caller,
        app_name,
        digest=digest,
        spec=spec,
        instances=instances,
        rollback_of=rollback_of,
        request_key=request_key,
    )
    if blueprint is not None:
        await ctx.store.put(f"blueprints/{blueprint.app}", dump(blueprint))
    return out


async def prepare_deployment(
    ctx: ServerContext,
    caller: Principal,
    app_name: str,
    *,
    digest: str,
    spec: AppSpec,
    instances: int,
    rollback_of: int | None = None,
    request_key: str | None = None,
) -> tuple[dict[str, Any], Blueprint | None]:
    """``_start_deployment`` but for writing the blueprint: the deployment's answer,
    and the blueprint to write under ``blueprints/{app}`` (None: it landed before).

    For a caller that writes several apps' blueprints in one transaction (applying a
    blueprint file with a pinned version).
    """
    digest = parse_digest(digest)
    if not await ctx.records.has_artifact(
        caller.tenant_id, digest
    ) or not await ctx.registry.exists(digest):
        raise BadRequestError(
            f"artifact {digest} is not in the registry: upload it first (POST /api/v1/artifacts)"
        )
    # require_signature, require_provenance
    await check_supply_chain(ctx, caller.tenant_id, app_name, digest)
    spec = spec.model_copy(update={"name": app_name})
    app = await ctx.records.get_or_create_app(caller.tenant_id, app_name)
    dep, created = await ctx.records.create_deployment(
        caller.tenant_id,
        app,
        digest=digest,
        spec=spec.model_dump(mode="json"),
        instances=instances,
        rollback_of=rollback_of,
        request_key=request_key,
    )
    current = await _owned_blueprint(ctx, caller, app_name)
    if not created:  # the blueprint is the one the first attempt recorded
        if current is not None and current.version >= dep.version:
            return deployment_out(app, dep).model_dump(mode="json"), None  # it landed before
        digest, instances = dep.digest, dep.instances
        spec = AppSpec.model_validate(dep.spec)
    ctx.metrics.deployments_created.inc()
    blueprint = Blueprint(
        app=in_cluster(caller, app_name),
        tenant=caller.tenant_id,
        deployment_id=dep.id,
        version=dep.version,
        digest=digest,
        spec=spec,
        instances=instances,
        previous=await _last_healthy(ctx, caller, current),
        rollout_started_at=time.time(),
        traceparent=tracing.traceparent(),
    )
    what = f"rollback to v{rollback_of}" if rollback_of else "deployment"
    await ctx.records.add_event(  # first in the timeline: the leader acts once the blueprint lands
        dep.id, "created", f"{what} v{dep.version} of {digest[:19]} with {instances} instance(s)"
    )
    return deployment_out(app, dep).model_dump(mode="json"), blueprint


async def _check_quota(
    ctx: ServerContext, caller: Principal, current: Blueprint | None, instances: int, spec: AppSpec
) -> None:
    """Refuse a change of the app's desired state that would take the tenant past its
    instances, CPU or memory quota (what it adds over the app's current reservation)."""
    new = app_reservation(instances, spec.resources.cpu, spec.resources.memory_mb)
    old = (
        app_reservation(
            current.instances, current.spec.resources.cpu, current.spec.resources.memory_mb
        )
        if current is not None
        else {}
    )
    await enforce_quota(ctx, caller.tenant_id, {q: new[q] - old.get(q, 0) for q in new})


@router.post("/apps/{app}/deployments", status_code=201)
async def create_deployment(
    app: str, body: DeploymentIn, request: Request, caller: Operator, ctx: Ctx
) -> JSONResponse:
    validate_app_name(app)
    # without an explicit count a redeploy keeps the current scale (`aether scale` sticks)
    current = await _owned_blueprint(ctx, caller, app)
    if body.instances is not None:
        instances = body.instances
    else:
        instances = current.instances if current else body.spec.instances
    await _check_quota(ctx, caller, current, instances, body.spec)

    async def produce() -> dict[str, Any]:
        out = await _start_deployment(
            ctx,
            caller,
            app,
            digest=body.digest,
            spec=body.spec,
            instances=instances,
            request_key=request_key(request),
        )
        if body.sbom is not None or body.manifest is not None:
            await ctx.records.set_artifact_metadata(
                caller.tenant_id, out["digest"], sbom=body.sbom, manifest=body.manifest
            )
        return out

    return JSONResponse(await produce(), status_code=201)


@router.get("/apps/{app}/deployments")
async def list_deployments(app: str, caller: Caller, ctx: Ctx) -> list[DeploymentOut]:
    row = await _app(ctx, caller, app)
    live = await _owned_blueprint(ctx, caller, app)
    out = []
    for dep in await ctx.records.list_deployments(caller.tenant_id, row):
        entry = deployment_out(row, dep)
        if live is not None and dep.id == live.deployment_id:
            entry.instances = live.instances  # the current count, after any `aether scale`
        out.append(entry)
    return out


@router.get("/deployments/{deployment_id}")
async def get_deployment(deployment_id: str, caller: Caller, ctx: Ctx) -> DeploymentOut:
    dep = await ctx.records.get_deployment(caller.tenant_id, deployment_id)
    apps = {a.id: a for a in await ctx.records.list_apps(caller.tenant_id, include_deleted=True)}
    out = deployment_out(apps[dep.app_id], dep)
    snap = await read_snapshot(ctx.store)
    out.instance_list = instances_of(snap, caller, in_cluster(caller, out.app), dep.version)
    out.instances_active = sum(1 for i in out.instance_list if i.state == "ACTIVE")
    out.events = [
        EventOut(type=e.type, message=e.message, created_at=e.created_at)
        for e in await ctx.records.list_events(dep.id)
    ]
    return out


@router.get("/apps")
async def list_apps(caller: Caller, ctx: Ctx) -> list[AppOut]:
    snap = await read_snapshot(ctx.store)
    stateful = [  # snapshots are kept under the cluster name (the instance's)
        (bp.tenant, bp.app)
        for bp, _ in snap.blueprints.values()
        if bp.tenant == caller.tenant_id and bp.spec.stateful
    ]
    taken = await ctx.records.newest_checkpoints(stateful) if stateful else {}
    now = time.time()
    out = []
    for app in await ctx.records.list_apps(caller.tenant_id):
        name = in_cluster(caller, app.name)
        entry = snap.blueprints.get(name)
        bp = entry[0] if entry and entry[0].tenant == caller.tenant_id else None
        newest = taken.get((caller.tenant_id, name))
        active = snap.active_count(name, bp.version) if bp else 0
        failure = (
            await _last_failure(ctx, bp.deployment_id) if bp and active < bp.instances else None
        )
        out.append(
            AppOut(
                name=app.name,
                version=bp.version if bp else None,
                deployment_id=bp.deployment_id if bp else None,
                instances_desired=bp.instances if bp else 0,
                instances_active=active,
                created_at=app.created_at,
                rpo_seconds=bp.spec.checkpoint.interval if bp and bp.spec.stateful else None,
                checkpoint_age_seconds=(
                    round(max(0.0, now - epoch(newest)), 1) if newest is not None else None
                ),
                route=route_path(app.name, caller.tenant),
                failure=failure,
            )
        )
    return out


async def _last_failure(ctx: ServerContext, deployment_id: str) -> str | None:
    """The last line of the deployment's newest instance failure (its cause, or the end
    of the instance's output: a traceback's last line), for ``aether status``."""
    events = await ctx.records.list_events(deployment_id)
    message = next((e.message for e in reversed(events) if e.type == "instance_failed"), None)
    if message is None:
        return None
    lines = [line for line in message.splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else None


@router.get("/apps/{app}")
async def get_app(app: str, caller: Caller, ctx: Ctx) -> AppOut:
    for entry in await list_apps(caller, ctx):
        if entry.name == app:
            return entry
    raise NotFoundError(f"app {app!r} not found; deploy it first with `aether deploy`")


async def _remove_legacy(ctx: ServerContext, caller: Principal, app: str) -> Blueprint | None:
    """Remove the tenant's blueprint kept under the plain name ``app`` by a release
    before cluster names (another tenant than ``default``: docs/operations.md)."""
    if in_cluster(caller, app) == app:
        return None  # the default tenant: its plain name is its cluster name
    kv = await ctx.store.get(f"blueprints/{app}")
    if kv is None or Blueprint.model_validate_json(kv.value).tenant != caller.tenant_id:
        return None
    return await remove_app(ctx.store, app, tenant=caller.tenant_id, force=True)


@router.delete("/apps/{app}")
async def delete_app(app: str, caller: Operator, ctx: Ctx, force: bool = False) -> AppDeletedOut:
    """Stop the app, remove its blueprint and endpoints, mark its records deleted.

    Its artifacts are no longer kept for it: the next garbage collection deletes
    those nothing else (another app, another tenant, a running instance) uses.
    """
    row = await _app(ctx, caller, app)
    name = in_cluster(caller, app)
    removed = await remove_app(ctx.store, name, tenant=caller.tenant_id, force=force)
    removed = await _remove_legacy(ctx, caller, app) or removed
    snap = await read_snapshot(ctx.store)
    stopping = sum(
        1
        for inst, _ in snap.instances.values()
        if inst.app == name and inst.tenant == row.tenant_id
    )
    deleted_at, ended = await ctx.records.delete_app(caller.tenant_id, row)
    forced = force and removed is not None and removed.previous is not None
    for dep in ended:
        await ctx.records.add_event(
            dep.id,
            "deleted",
            f"app deleted{' during a rollout (forced)' if forced else ''}; "
            f"{stopping} instance(s) stopping",
        )
    return AppDeletedOut(
        app=app,
        deleted_at=deleted_at,
        version=removed.version if removed else None,
        instances_stopping=stopping,
        forced=forced,
    )


@router.post("/apps/{app}/scale")
async def scale(app: str, body: ScaleIn, caller: Operator, ctx: Ctx) -> AppOut:
    current = await _owned_blueprint(ctx, caller, app)
    if current is not None:
        await _check_quota(ctx, caller, current, body.instances, current.spec)
    old, _ = await _update_blueprint(
        ctx, caller, app, lambda bp: bp.model_copy(update={"instances": body.instances})
    )
    await ctx.records.add_event(
        old.deployment_id, "scaled", f"instances {old.instances} → {body.instances}"
    )
    return await get_app(app, caller, ctx)


@router.post("/apps/{app}/promote")
async def promote(app: str, caller: Operator, ctx: Ctx) -> Blueprint:
    """Let a canary rollout waiting for promotion continue."""

    def promote_rollout(bp: Blueprint) -> Blueprint:
        if bp.previous is None:
            raise ConflictError(f"app {app!r} has no rollout in progress to promote")
        return bp.model_copy(update={"promoted": True})

    old, promoted = await _update_blueprint(ctx, caller, app, promote_rollout)
    await ctx.records.add_event(old.deployment_id, "promoted", "canary promoted by hand")
    return shown_blueprint(caller, promoted)


async def _update_blueprint(
    ctx: ServerContext, caller: Principal, app: str, change: Callable[[Blueprint], Blueprint]
) -> tuple[Blueprint, Blueprint]:
    """Apply ``change`` to the caller's blueprint with compare-and-swap; (before, after)."""
    await _app(ctx, caller, app)
    return await update_blueprint(
        ctx.store, in_cluster(caller, app), change, tenant=caller.tenant_id
    )


@router.get("/deployments/{deployment_id}/events")
async def deployment_events(deployment_id: str, caller: Caller, ctx: Ctx) -> list[EventOut]:
    dep = await ctx.records.get_deployment(caller.tenant_id, deployment_id)
    return [
        EventOut(type=e.type, message=e.message, created_at=e.created_at)
        for e in await ctx.records.list_events(dep.id)
    ]


@router.post("/apps/{app}/rollback", status_code=201)
async def rollback(
    app: str, body: RollbackIn, request: Request, caller: Operator, ctx: Ctx
) -> JSONResponse:
    row = await _app(ctx, caller, app)
    current = await _owned_blueprint(ctx, caller, app)
    deployments = await ctx.records.list_deployments(caller.tenant_id, row)
    if body.version is not None:
        # looked up in the list, not by a query: an out-of-range number is a 404, not a 500
        found = [d for d in deployments if d.version == body.version]
        if not found:
            raise NotFoundError(f"app {app!r} has no version {body.version}")
        target = found[0]
    else:
        current_version = current.version if current else None
        older = [
            d
            for d in deployments
            if d.created_at >= row.created_at  # not from before the app was deleted
            and (current_version is None or (d.version < current_version and d.status != "failed"))
        ]
        if not older:
            raise ConflictError(f"app {app!r} has no earlier deployment to roll back to")
        target = older[0]
    instances = current.instances if current else target.instances
    await _check_quota(ctx, caller, current, instances, AppSpec.model_validate(target.spec))

    async def produce() -> dict[str, Any]:
        return await _start_deployment(
            ctx,
            caller,
            app,
            digest=target.digest,
            spec=AppSpec.model_validate(target.spec),
            instances=instances,
            rollback_of=target.version,
            request_key=request_key(request),
        )

    return JSONResponse(await produce(), status_code=201)


@router.get(
    "/apps/{app}/logs",
    response_model=None,
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def logs(
    app: str,
    caller: Caller,
    ctx: Ctx,
    tail: Annotated[int, Query(ge=0, le=100_000)] = 200,
    follow: bool = False,
) -> PlainTextResponse | StreamingResponse:
    await _app(ctx, caller, app)
    lines, offset = ctx.logs.tail(caller.tenant_id, app, tail)
    if not follow:
        return PlainTextResponse("".join(f"{line}\n" for line in lines))

    async def stream() -> AsyncIterator[str]:
        for line in lines:
            yield f"{line}\n"
        try:
            async for line in ctx.logs.follow(caller.tenant_id, app, offset):
                yield f"{line}\n"
        except asyncio.CancelledError:
            return

    return StreamingResponse(stream(), media_type="text/plain")

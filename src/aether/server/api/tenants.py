"""Tenants: create, list, read, describe and delete (the cluster admin's).

A cluster admin is an admin of the ``default`` tenant (``ClusterAdmin``); a tenant
admin may read its own tenant, and another tenant is a 404 to it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from aether.errors import NotFoundError
from aether.model.tenants import TenantDeletedOut, TenantIn, TenantOut, TenantPatch
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Admin, ClusterAdmin
from aether.server.services.tenants import TenantUsage, delete_tenant, tenant_usage
from aether.store.records import Principal
from aether.store.records.schema import Tenant

__all__ = ["router"]

router = APIRouter(tags=["tenants"])
Ctx = Annotated[ServerContext, Depends(get_context)]


def _out(tenant: Tenant, usage: TenantUsage, admin_token: str | None = None) -> TenantOut:
    return TenantOut(
        name=tenant.name,
        display_name=tenant.display_name,
        description=tenant.description,
        created_at=tenant.created_at,
        apps=usage.apps,
        instances=usage.instances,
        tasks=usage.tasks,
        sandboxes=usage.sandboxes,
        admin_token=admin_token,
    )


async def _tenant(ctx: ServerContext, caller: Principal, name: str) -> Tenant:
    """The named tenant, if the caller may see it (another tenant's is a 404)."""
    tenant = await ctx.records.find_tenant(name)
    if tenant is None or not (caller.cluster_admin or tenant.id == caller.tenant_id):
        raise NotFoundError(f"tenant {name!r} not found")
    return tenant


async def _one(ctx: ServerContext, tenant: Tenant) -> TenantOut:
    return _out(tenant, (await tenant_usage(ctx, [tenant]))[tenant.id])


@router.post("/tenants", status_code=201)
async def create_tenant(body: TenantIn, caller: ClusterAdmin, ctx: Ctx) -> TenantOut:
    tenant = await ctx.records.create_tenant(body.name, body.display_name, body.description)
    token = None
    if body.admin_token:
        token = await ctx.records.create_token(tenant.id, "admin", f"{body.name}-admin")
    return _out(tenant, TenantUsage(), token)


@router.get("/tenants")
async def list_tenants(caller: ClusterAdmin, ctx: Ctx) -> list[TenantOut]:
    tenants = list(await ctx.records.list_tenants())
    usage = await tenant_usage(ctx, tenants)
    return [_out(t, usage[t.id]) for t in tenants]


@router.get("/tenants/{tenant}")
async def get_tenant(tenant: str, caller: Admin, ctx: Ctx) -> TenantOut:
    return await _one(ctx, await _tenant(ctx, caller, tenant))


@router.patch("/tenants/{tenant}")
async def patch_tenant(tenant: str, body: TenantPatch, caller: ClusterAdmin, ctx: Ctx) -> TenantOut:
    row = await _tenant(ctx, caller, tenant)
    values = body.model_dump(exclude_none=True)
    if values:
        await ctx.records.update_tenant(row.id, **values)
    return await _one(ctx, await _tenant(ctx, caller, tenant))


@router.delete("/tenants/{tenant}")
async def remove_tenant(
    tenant: str, caller: ClusterAdmin, ctx: Ctx, force: bool = False
) -> TenantDeletedOut:
    """Refused (409, naming what runs) while the tenant runs something, unless forced."""
    row = await _tenant(ctx, caller, tenant)
    done = await delete_tenant(ctx, row, force=force)
    return TenantDeletedOut(
        name=row.name,
        forced=force,
        apps_deleted=done.apps,
        instances_stopping=done.instances,
        tasks_cancelled=done.tasks,
        sandboxes_deleted=done.sandboxes,
        tokens_revoked=done.tokens,
        artifacts_deleted=done.artifacts,
    )

"""Tenants' rate limits and quotas: read and set by the cluster admin, read by a tenant admin.

``GET/PUT /tenants/{tenant}/limits`` (the cluster admin: any tenant; a tenant
admin may read its own) and ``GET /limits`` (the caller's own tenant). Another
tenant's limits are a 404 to anyone but the cluster admin.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from aether.core.quotas import effective
from aether.errors import NotFoundError
from aether.model.limits import LimitsOut, TenantLimits
from aether.server.context import ServerContext, get_context
from aether.server.http.audit import refuse
from aether.server.http.auth import Admin
from aether.server.services.quotas import (
    cluster_defaults,
    configured_limits,
    tenant_usage,
)
from aether.store.records import Principal

__all__ = ["router"]

router = APIRouter(tags=["limits"])
Ctx = Annotated[ServerContext, Depends(get_context)]


async def _visible_tenant(ctx: ServerContext, caller: Principal, tenant: str) -> str:
    """The id of ``tenant`` if the caller may see it: its own, or any for the cluster
    admin; 404 otherwise (another tenant's existence is not told)."""
    if tenant == caller.tenant:
        return caller.tenant_id
    tenant_id = await ctx.records.tenant_id_of(tenant) if caller.cluster_admin else None
    if tenant_id is None:
        raise NotFoundError(f"tenant {tenant!r} not found")
    return tenant_id


async def _limits_out(ctx: ServerContext, tenant: str, tenant_id: str) -> LimitsOut:
    configured = await configured_limits(ctx, tenant_id)
    return LimitsOut(
        tenant=tenant,
        configured=configured,
        effective=effective(configured, cluster_defaults(ctx)),
        usage=await tenant_usage(ctx, tenant_id),
    )


@router.get("/limits")
async def own_limits(caller: Admin, ctx: Ctx) -> LimitsOut:
    """The caller's tenant's limits and what it uses now."""
    return await _limits_out(ctx, caller.tenant, caller.tenant_id)


@router.get("/tenants/{tenant}/limits")
async def get_limits(tenant: str, caller: Admin, ctx: Ctx) -> LimitsOut:
    tenant_id = await _visible_tenant(ctx, caller, tenant)
    return await _limits_out(ctx, tenant, tenant_id)


@router.put("/tenants/{tenant}/limits")
async def put_limits(
    tenant: str, body: TenantLimits, request: Request, caller: Admin, ctx: Ctx
) -> LimitsOut:
    """Replace the tenant's own limits (a field left out or null: the cluster default)."""
    tenant_id = await _visible_tenant(ctx, caller, tenant)
    if not caller.cluster_admin:
        raise refuse(
            request,
            caller,
            f"tenants/{tenant}/limits",
            "only a cluster admin (an admin of the default tenant) may change limits",
        )
    await ctx.records.set_tenant_limits(tenant_id, body.model_dump())
    ctx.limiter.forget(tenant_id)
    return await _limits_out(ctx, tenant, tenant_id)

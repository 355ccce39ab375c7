"""What the controller decided and why: ``GET /api/v1/decisions``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from aether.model.decisions import DecisionOut
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Caller
from aether.server.leader.controller import decision_out
from aether.store.records import DEFAULT_TENANT

__all__ = ["router"]

router = APIRouter(tags=["controller"])
Ctx = Annotated[ServerContext, Depends(get_context)]


@router.get("/decisions")
async def list_decisions(
    caller: Caller,
    ctx: Ctx,
    layer: Annotated[int | None, Query(ge=1, le=3)] = None,
    kind: Annotated[str | None, Query(pattern="^(scale|drain|undrain|advice|rebalance)$")] = None,
    target: Annotated[str | None, Query(max_length=128)] = None,
    outcome: Annotated[str | None, Query(pattern="^(applied|refused|failed)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[DecisionOut]:
    """Newest first: the caller's apps' decisions and the cluster's drains and undrains;
    the default namespace's admins also see what concerns no tenant (adviser failures)."""
    cluster_admin = caller.role == "admin" and caller.tenant == DEFAULT_TENANT
    rows = await ctx.records.list_decisions(
        None if cluster_admin else caller.tenant_id,
        layer=layer,
        kind=kind,
        target=target,
        outcome=outcome,
        limit=limit,
    )
    return [decision_out(row) for row in rows]

"""What the controller decided and why: ``GET /api/v1/decisions``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from aether.model.app import APP_NAME_RE
from aether.model.decisions import DecisionOut
from aether.model.names import cluster_name, shown_name
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Caller
from aether.server.leader.controller import decision_out
from aether.store.records import DEFAULT_TENANT, Principal
from aether.store.records.schema import DecisionRow

__all__ = ["router"]

router = APIRouter(tags=["controller"])
Ctx = Annotated[ServerContext, Depends(get_context)]


@router.get("/decisions")
async def list_decisions(
    caller: Caller,
    ctx: Ctx,
    layer: Annotated[int | None, Query(ge=1, le=3)] = None,
    kind: Annotated[
        str | None, Query(pattern="^(scale|drain|undrain|advice|rebalance|agent)$")
    ] = None,
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
        target=_targets(caller, target),
        outcome=outcome,
        limit=limit,
    )
    return [_shown(caller, row) for row in rows]


def _targets(caller: Principal, target: str | None) -> str | tuple[str, ...] | None:
    """What ``target`` names in the records: a node, or the caller's app by its cluster
    name (the controller decides over cluster names)."""
    if target is None or not APP_NAME_RE.match(target):
        return target
    return (target, cluster_name(target, caller.tenant))


def _shown(caller: Principal, row: DecisionRow) -> DecisionOut:
    """A decision as the caller reads it: its own app's by the app's plain name."""
    out = decision_out(row)
    if row.tenant_id is None:
        return out  # a node's (drain, undrain) or the cluster's
    return out.model_copy(update={"target": shown_name(out.target, caller.tenant)})

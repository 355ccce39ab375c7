"""Alerts and silences: ``GET /api/v1/alerts``, ``POST/GET/DELETE /api/v1/alerts/silences``.

A tenant sees its own apps' alerts; the cluster's (nodes, certificates) are seen by
the default tenant's operators and admins, who see every tenant's too. A tenant's
silence mutes its own alerts only; a cluster operator's mutes any. Another tenant's
silence is a 404.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from aether.errors import NotFoundError
from aether.model.alerts import AlertOut, SilenceIn, SilenceOut
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Caller, Operator
from aether.store.records import Principal
from aether.store.records.base import new_id
from aether.store.records.schema import AlertRow, AlertSilenceRow

__all__ = ["router"]

router = APIRouter(tags=["alerts"])
Ctx = Annotated[ServerContext, Depends(get_context)]


def _scope(caller: Principal) -> tuple[str | None, bool]:
    """(the tenant whose alerts the caller sees, None: all; sees the cluster's)."""
    if caller.cluster_operator:
        return None, True
    return caller.tenant, False


def alert_out(row: AlertRow) -> AlertOut:
    return AlertOut.model_validate(row, from_attributes=True)


def silence_out(row: AlertSilenceRow, now: float) -> SilenceOut:
    return SilenceOut(
        id=row.id,
        tenant=row.tenant,
        matchers={str(k): str(v) for k, v in row.matchers.items()},
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        comment=row.comment,
        created_by=row.created_by,
        active=row.starts_at <= now < row.ends_at,
    )


@router.get("/alerts")
async def list_alerts(
    caller: Caller,
    ctx: Ctx,
    state: Annotated[str | None, Query(pattern="^(pending|firing|resolved)$")] = None,
) -> list[AlertOut]:
    """The alerts the caller may see, the most recently changed first."""
    tenant, cluster = _scope(caller)
    rows = await ctx.records.list_alerts(tenant, cluster=cluster, state=state)
    return [alert_out(row) for row in rows]


@router.get("/alerts/silences")
async def list_silences(caller: Caller, ctx: Ctx) -> list[SilenceOut]:
    tenant, _ = _scope(caller)
    now = time.time()
    return [silence_out(row, now) for row in await ctx.records.list_silences(tenant)]


@router.post("/alerts/silences", status_code=201)
async def create_silence(caller: Operator, ctx: Ctx, body: SilenceIn) -> SilenceOut:
    """Mute the notifications of the alerts ``matchers`` match (``alertname`` is the
    rule) for ``duration`` seconds; a tenant's silence mutes only its own alerts."""
    tenant, _ = _scope(caller)
    now = time.time()
    row = await ctx.records.add_silence(
        {
            "id": new_id(),
            "tenant": tenant,
            "matchers": body.matchers,
            "starts_at": now,
            "ends_at": now + body.duration,
            "comment": body.comment,
            "created_by": caller.user or caller.token_id,
        }
    )
    return silence_out(row, now)


@router.delete("/alerts/silences/{silence_id}", status_code=204)
async def delete_silence(caller: Operator, ctx: Ctx, silence_id: str) -> Response:
    tenant, _ = _scope(caller)
    if not await ctx.records.delete_silence(silence_id, tenant):
        raise NotFoundError(f"no silence {silence_id}")
    return Response(status_code=204)

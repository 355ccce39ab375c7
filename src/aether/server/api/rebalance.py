"""Spread an app's instances now: ``POST /api/v1/rebalance``."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from aether.model.rebalance import RebalanceIn, RebalanceOut
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Operator
from aether.server.services.rebalance import rebalance_now

__all__ = ["router"]

router = APIRouter(tags=["migrations"])
Ctx = Annotated[ServerContext, Depends(get_context)]


@router.post(
    "/rebalance",
    status_code=202,
    responses={200: {"model": RebalanceOut, "description": "no move started now"}},
)
async def rebalance(
    caller: Operator, ctx: Ctx, response: Response, body: RebalanceIn | None = None
) -> RebalanceOut:
    """Plan the moves that spread the app's (or every app's of the tenant) instances and
    start the first one (202); one move at a time, so 200 when none could start now
    (nothing to move, or a migration in flight: ask again once it is done)."""
    app = body.app if body is not None else None
    answer = await rebalance_now(ctx, caller.tenant_id, app, time.time())
    if answer.started is None:
        response.status_code = 200
    return answer

"""Spread an app's instances now: ``POST /api/v1/rebalance``."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from aether.model.app import validate_app_name
from aether.model.names import cluster_name, shown_name
from aether.model.rebalance import RebalanceIn, RebalanceOut
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Operator
from aether.server.services.rebalance import rebalance_now
from aether.store.records import Principal

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
    name = None if app is None else cluster_name(validate_app_name(app), caller.tenant)
    answer = _shown(caller, await rebalance_now(ctx, caller.tenant_id, name, time.time()))
    if answer.started is None:
        response.status_code = 200
    return answer


def _shown(caller: Principal, answer: RebalanceOut) -> RebalanceOut:
    """The answer as the caller reads it: its own apps by their plain names."""

    def shown(name: str) -> str:
        return shown_name(name, caller.tenant)

    return answer.model_copy(
        update={
            "app": None if answer.app is None else shown(answer.app),
            "planned": [m.model_copy(update={"app": shown(m.app)}) for m in answer.planned],
            "started": None
            if answer.started is None
            else answer.started.model_copy(update={"app": shown(answer.started.app)}),
            "refusals": [r.model_copy(update={"app": shown(r.app)}) for r in answer.refusals],
        }
    )

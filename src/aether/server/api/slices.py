"""A tenant's slices: ``/slices`` (list, one with its entry points' schemas) and
``/slices/{slice}/{entry}:call`` (call an entry point on one ACTIVE instance).

Viewers read; operators and admins call. Another tenant's slice is the 404 of a
slice nobody has. A call is audited as every write is (the audit middleware); its
arguments and result are not.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request

from aether.errors import BadRequestError
from aether.model.app import APP_NAME_RE
from aether.model.slices import (
    MAX_CALL_TIMEOUT,
    SliceCallOut,
    SliceOut,
    SliceSummaryOut,
)
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Caller, Operator
from aether.server.services.slices import call_slice, read_slice, slice_summaries

__all__ = ["router"]

router = APIRouter(tags=["slices"])
Ctx = Annotated[ServerContext, Depends(get_context)]
SliceName = Annotated[str, Path(pattern=APP_NAME_RE.pattern, description="the slice (its app)")]
Entry = Annotated[str, Path(min_length=1, max_length=128, description="the entry point")]

_CALL_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "args": {"type": "array", "description": "positional arguments"},
                        "kwargs": {"type": "object", "description": "keyword arguments"},
                        "timeout": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "maximum": MAX_CALL_TIMEOUT,
                            "description": "seconds to wait for the answer (default 30)",
                        },
                    },
                    "additionalProperties": False,
                }
            }
        },
    },
    "responses": {
        "502": {"description": "upstream_failed: the entry point raised, or the instance was lost"},
        "503": {"description": "no_endpoint: the slice has no ACTIVE instance"},
        "504": {"description": "deadline_exceeded: no answer within the timeout"},
    },
}


@router.get("/slices")
async def list_slices(caller: Caller, ctx: Ctx) -> list[SliceSummaryOut]:
    """The tenant's slices: entry point names and how many instances are ACTIVE."""
    return await slice_summaries(ctx.store, caller.tenant)


@router.get("/slices/{slice}")
async def get_slice(slice: SliceName, caller: Caller, ctx: Ctx) -> SliceOut:
    """A slice's entry points (with their argument and result schemas) and its ACTIVE
    instances."""
    return await read_slice(ctx.store, caller.tenant, slice)


@router.post("/slices/{slice}/{entry}:call", openapi_extra=_CALL_BODY)
async def call_entry(
    slice: SliceName, entry: Entry, request: Request, caller: Operator, ctx: Ctx
) -> SliceCallOut:
    """Call the entry point on one ACTIVE instance (round robin): ``{"args": [...]}``
    or ``{"kwargs": {...}}``, optional ``timeout`` (seconds); answers ``{"result": …}``."""
    if entry.startswith("$"):
        raise BadRequestError(f"{entry!r} is a control entry: only nodes make control calls")
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        body = None  # refused with the other bad bodies, once the entry point is found
    result = await call_slice(ctx.store, caller.tenant, slice, entry, body)
    return SliceCallOut(result=result)

"""Idempotency-Key handling: the same key and body give the same answer once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from aether.errors import BadRequestError, ConflictError
from aether.server.context import ServerContext
from aether.store.records import Principal

__all__ = ["idempotent"]


async def idempotent(
    request: Request,
    ctx: ServerContext,
    caller: Principal,
    body: dict[str, Any],
    produce: Callable[[], Awaitable[dict[str, Any]]],
    *,
    status_code: int = 201,
) -> JSONResponse:
    """Run ``produce`` once per Idempotency-Key; replay its answer for a repeat."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return JSONResponse(await produce(), status_code=status_code)
    if not 1 <= len(key) <= 255:
        raise BadRequestError("Idempotency-Key must be 1 to 255 characters")
    scope = f"{request.method} {request.url.path} {key}"
    request_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    found = await ctx.records.get_idempotent(caller.tenant_id, scope)
    if found is not None:
        if found.request_hash != request_hash:
            raise ConflictError(
                "this Idempotency-Key was already used with a different request body; "
                "use a new key for a new request"
            )
        return JSONResponse(
            found.response, status_code=found.status_code, headers={"Idempotent-Replay": "true"}
        )
    response = await produce()
    await ctx.records.save_idempotent(caller.tenant_id, scope, request_hash, status_code, response)
    return JSONResponse(response, status_code=status_code)

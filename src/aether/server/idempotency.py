"""Idempotency-Key handling: the same key and body give the same answer once."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
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
    if len(scope) > _SCOPE_WIDTH:  # the column is VARCHAR(255); PostgreSQL enforces it
        scope = "sha256:" + hashlib.sha256(scope.encode()).hexdigest()
    request_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    # concurrent repeats (a client retrying while its first try still runs) wait for the
    # first one here and replay its answer, instead of all missing the lookup and all producing
    async with _one_at_a_time((id(asyncio.get_running_loop()), caller.tenant_id, scope)):
        found = await ctx.records.get_idempotent(caller.tenant_id, scope)
        if found is not None:
            if found.request_hash != request_hash:
                raise ConflictError(
                    "this Idempotency-Key was already used with a different request body; "
                    "use a new key for a new request"
                )
            return JSONResponse(
                found.response,
                status_code=found.status_code,
                headers={"Idempotent-Replay": "true"},
            )
        response = await produce()
        await ctx.records.save_idempotent(
            caller.tenant_id, scope, request_hash, status_code, response
        )
    return JSONResponse(response, status_code=status_code)


_SCOPE_WIDTH = 255
_locks: dict[tuple[int, str, str], tuple[asyncio.Lock, int]] = {}


@contextlib.asynccontextmanager
async def _one_at_a_time(name: tuple[int, str, str]) -> AsyncIterator[None]:
    """A lock per key in this process, dropped when its last user leaves."""
    lock, users = _locks.get(name, (None, 0))
    lock = lock or asyncio.Lock()
    _locks[name] = (lock, users + 1)
    try:
        async with lock:
            yield
    finally:
        lock, users = _locks[name]
        if users == 1:
            del _locks[name]
        else:
            _locks[name] = (lock, users - 1)

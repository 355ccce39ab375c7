"""Policy plugins: WebAssembly risk and guard rules the leader runs (docs/plugins.md).

The cluster's, not a tenant's: every route is the cluster admin's (an admin of
the default tenant). An upload is JSON with the module in base64; the module is
checked before it is stored (a valid WebAssembly binary, the ABI's exports, no
imports at all). Uploading a name again with a new version replaces the plugin;
the leader picks the change up within seconds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from aether.core.plugin_abi import (
    DEFAULT_DEADLINE_MS,
    DEFAULT_FUEL,
    DEFAULT_MEMORY_BYTES,
    PluginKind,
)
from aether.errors import BadRequestError
from aether.model.time import Timestamp
from aether.plugins.wasm import MAX_MODULE_BYTES, PluginError, inspect
from aether.server.context import ServerContext, get_context
from aether.server.http.audit import actor_of
from aether.server.http.auth import ClusterAdmin
from aether.store.records.schema import PluginRow

__all__ = ["PluginIn", "PluginOut", "router"]

router = APIRouter(tags=["plugins"])
Ctx = Annotated[ServerContext, Depends(get_context)]

NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
VERSION = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"


class PluginIn(BaseModel):
    name: Annotated[str, Field(pattern=NAME)]
    kind: PluginKind
    version: Annotated[str, Field(pattern=VERSION)] = "1"
    #: the compiled module (``.wasm``, not the text format), base64
    wasm: Annotated[str, Field(min_length=1, max_length=(MAX_MODULE_BYTES * 4) // 3 + 4)]
    fuel: Annotated[int, Field(ge=1000, le=1_000_000_000)] = DEFAULT_FUEL
    memory_bytes: Annotated[int, Field(ge=65536, le=256 * 1024 * 1024)] = DEFAULT_MEMORY_BYTES
    deadline_ms: Annotated[int, Field(ge=1, le=1000)] = DEFAULT_DEADLINE_MS


class PluginOut(BaseModel):
    name: str
    kind: str
    version: str
    sha256: str
    size: int
    fuel: int
    memory_bytes: int
    deadline_ms: int
    created_at: Timestamp | None = None
    created_by: str = ""


def plugin_out(row: PluginRow) -> PluginOut:
    return PluginOut.model_validate(row, from_attributes=True)


@router.post("/plugins", status_code=201)
async def add_plugin(body: PluginIn, caller: ClusterAdmin, ctx: Ctx) -> PluginOut:
    try:
        wasm = base64.b64decode(body.wasm, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError("wasm must be the module's bytes in base64") from None
    try:
        digest = await asyncio.to_thread(inspect, wasm)
    except PluginError as exc:
        raise BadRequestError(f"not a plugin: {exc}") from None
    kind, actor = actor_of(caller)
    row, _ = await ctx.records.put_plugin(
        PluginRow(
            name=body.name,
            version=body.version,
            kind=body.kind,
            sha256=digest,
            size=len(wasm),
            wasm=wasm,
            fuel=body.fuel,
            memory_bytes=body.memory_bytes,
            deadline_ms=body.deadline_ms,
            created_by=f"{kind}:{actor}"[:160],
        )
    )
    return plugin_out(row)


@router.get("/plugins")
async def list_plugins(caller: ClusterAdmin, ctx: Ctx) -> list[PluginOut]:
    return [plugin_out(row) for row in await ctx.records.list_plugins()]


@router.get("/plugins/{name}")
async def get_plugin(name: str, caller: ClusterAdmin, ctx: Ctx) -> PluginOut:
    return plugin_out(await ctx.records.get_plugin(name))


@router.delete("/plugins/{name}")
async def delete_plugin(name: str, caller: ClusterAdmin, ctx: Ctx) -> PluginOut:
    return plugin_out(await ctx.records.delete_plugin(name))

"""API tokens: issue (admin), list, revoke, and rotate your own.

Join tokens (role ``join``) are the cluster admin's (an admin of the default
tenant): they add nodes to the cluster, so no tenant admin may mint one. Node
credentials are never issued here: a node gets its own at join
(``POST /api/v1/nodes/join``) and loses it with ``POST /api/v1/nodes/{node}/revoke``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from aether.errors import ForbiddenError
from aether.model.time import Timestamp
from aether.server.context import ServerContext, get_context
from aether.server.http.audit import refuse
from aether.server.http.auth import Admin, Caller
from aether.server.services.revocations import forget_tokens

__all__ = ["router"]

router = APIRouter(tags=["tokens"])
Ctx = Annotated[ServerContext, Depends(get_context)]


class TokenIn(BaseModel):
    role: Literal["admin", "operator", "viewer", "join"]
    name: Annotated[str, Field(min_length=1, max_length=128)]


class TokenOut(BaseModel):
    id: str
    name: str
    role: str
    created_at: Timestamp | None = None
    revoked_at: Timestamp | None = None
    token: str | None = None  # only when issued


@router.post("/tokens", status_code=201)
async def issue(body: TokenIn, request: Request, caller: Admin, ctx: Ctx) -> TokenOut:
    if body.role == "join" and not caller.cluster_admin:
        raise refuse(
            request,
            caller,
            "tokens/join",
            "only a cluster admin (an admin of the default tenant) may create join tokens",
        )
    token_id, token = await ctx.records.issue_token(caller.tenant_id, body.role, body.name)
    return TokenOut(id=token_id, name=body.name, role=body.role, token=token)


@router.get("/tokens")
async def list_tokens(caller: Admin, ctx: Ctx) -> list[TokenOut]:
    return [
        TokenOut(
            id=t.id, name=t.name, role=t.role, created_at=t.created_at, revoked_at=t.revoked_at
        )
        for t in await ctx.records.list_tokens(caller.tenant_id)
    ]


@router.delete("/tokens/{token_id}")
async def revoke(token_id: str, caller: Admin, ctx: Ctx) -> TokenOut:
    token = await ctx.records.get_token(caller.tenant_id, token_id)
    await ctx.records.revoke_token(token.id)
    await forget_tokens(ctx, [token.id])
    return TokenOut(id=token.id, name=token.name, role=token.role)


@router.post("/tokens/rotate", status_code=201)
async def rotate(caller: Caller, ctx: Ctx) -> TokenOut:
    """A new token with the caller's role; the token that made this call stops working."""
    current = await ctx.records.get_token(caller.tenant_id, caller.token_id)
    if current.role == "join":
        raise ForbiddenError("join tokens are rotated by an admin: POST /api/v1/tokens")
    if current.role == "node":
        raise ForbiddenError("a node gets a new credential by joining again")
    token_id, token = await ctx.records.issue_token(caller.tenant_id, current.role, current.name)
    await ctx.records.revoke_token(current.id)
    await forget_tokens(ctx, [current.id])
    return TokenOut(id=token_id, name=current.name, role=current.role, token=token)

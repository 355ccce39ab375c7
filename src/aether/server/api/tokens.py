"""API tokens: issue (admin), list, revoke, and rotate your own.

Join tokens (role ``join``) are the cluster admin's (an admin of the default
tenant): they add nodes to the cluster, so no tenant admin may mint one. Node
credentials are never issued here: a node gets its own at join
(``POST /api/v1/nodes/join``) and loses it with ``POST /api/v1/nodes/{node}/revoke``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from aether.errors import BadRequestError, ForbiddenError
from aether.model.time import Timestamp
from aether.server.context import ServerContext, get_context
from aether.server.http.audit import refuse
from aether.server.http.auth import Admin, Caller
from aether.server.services.revocations import forget_tokens
from aether.store.records.base import now

__all__ = ["router"]

router = APIRouter(tags=["tokens"])
Ctx = Annotated[ServerContext, Depends(get_context)]


class TokenIn(BaseModel):
    #: the role of a bare token; a token of an account (``user``) has the account's role
    role: Literal["admin", "operator", "viewer", "join"] | None = None
    name: Annotated[str, Field(min_length=1, max_length=128)]
    #: a member of this tenant (a person or a service account) the token belongs to
    user: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    #: seconds from now until the token stops working; none: until revoked
    expires_in: Annotated[int, Field(ge=60, le=10 * 365 * 86400)] | None = None
    #: a join token only: how many nodes may join with it (the last join revokes it)
    uses: Annotated[int, Field(ge=1, le=100_000)] | None = None


class TokenOut(BaseModel):
    id: str
    name: str
    role: str
    user: str | None = None
    created_at: Timestamp | None = None
    expires_at: Timestamp | None = None
    revoked_at: Timestamp | None = None
    uses_left: int | None = None  # a join token's joins still allowed; None: no limit
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
    if body.uses is not None and body.role != "join":
        raise BadRequestError("only a join token has a number of uses")
    expires = now() + timedelta(seconds=body.expires_in) if body.expires_in else None
    user_id: str | None = None
    role: str | None = body.role
    if body.user is not None:
        member = await ctx.records.member(caller.tenant_id, body.user)
        if body.role is not None and body.role != member.role:
            raise BadRequestError(
                f"a token of {body.user!r} has its role ({member.role}); leave role out"
            )
        user_id, role = member.user.id, member.role
    if role is None:
        raise BadRequestError("a token needs a role, or a user whose role it takes")
    token_id, token = await ctx.records.issue_token(
        caller.tenant_id, role, body.name, user_id=user_id, expires_at=expires, uses=body.uses
    )
    return TokenOut(
        id=token_id,
        name=body.name,
        role=role,
        user=body.user,
        expires_at=expires,
        uses_left=body.uses,
        token=token,
    )


@router.get("/tokens")
async def list_tokens(caller: Admin, ctx: Ctx) -> list[TokenOut]:
    names = {m.user.id: m.user.name for m in await ctx.records.members(caller.tenant_id)}
    return [
        TokenOut(
            id=t.id,
            name=t.name,
            role=t.role,
            user=names.get(t.user_id) if t.user_id else None,
            created_at=t.created_at,
            expires_at=t.expires_at,
            revoked_at=t.revoked_at,
            uses_left=t.uses_left,
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
    token_id, token = await ctx.records.issue_token(
        caller.tenant_id,
        current.role,
        current.name,
        user_id=current.user_id,
        expires_at=current.expires_at,
    )
    await ctx.records.revoke_token(current.id)
    await forget_tokens(ctx, [current.id])
    return TokenOut(
        id=token_id,
        name=current.name,
        role=caller.role,
        user=caller.user,
        expires_at=current.expires_at,
        token=token,
    )

"""A tenant's named secrets: ``/secrets`` (the headers of http tools, what policies
redact).

Viewers list the names and timestamps; admins set and remove. A value is never
returned, logged or audited (the audit event names the secret only); another
tenant's secret is a 404.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from aether.model.secrets import SECRET_NAME_PATTERN, SecretDeletedOut, SecretIn, SecretOut
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Admin, Caller
from aether.server.services.secrets import delete_secret, put_secret, secret_out

__all__ = ["router"]

router = APIRouter(tags=["secrets"])
Ctx = Annotated[ServerContext, Depends(get_context)]
Name = Annotated[str, Path(pattern=SECRET_NAME_PATTERN)]


@router.get("/secrets")
async def list_secrets(caller: Caller, ctx: Ctx) -> list[SecretOut]:
    """The tenant's secrets: names and timestamps, never values."""
    return [secret_out(row) for row in await ctx.records.list_secrets(caller.tenant_id)]


@router.put("/secrets/{name}", responses={201: {"description": "a new secret"}})
async def set_secret(
    name: Name, body: SecretIn, caller: Admin, ctx: Ctx, response: Response
) -> SecretOut:
    """Set a secret (stored encrypted): 201 when it is new, 200 when it replaced one."""
    out, created = await put_secret(ctx, caller.tenant_id, name, body.value.get_secret_value())
    response.status_code = 201 if created else 200
    return out


@router.delete("/secrets/{name}")
async def remove_secret(name: Name, caller: Admin, ctx: Ctx) -> SecretDeletedOut:
    await delete_secret(ctx, caller.tenant_id, name)
    return SecretDeletedOut(name=name)

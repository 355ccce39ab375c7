"""A tenant's named secrets as the server uses them: sealed on the way in, listed by
name, and unsealed only for the run loop (:func:`tenant_secrets`)."""

from __future__ import annotations

from aether.errors import NotFoundError
from aether.model.secrets import SecretOut
from aether.server.context import ServerContext
from aether.store.records.schema import SecretRow

__all__ = ["delete_secret", "put_secret", "secret_out", "tenant_secrets"]


def secret_out(row: SecretRow) -> SecretOut:
    return SecretOut(name=row.name, created_at=row.created_at, updated_at=row.updated_at)


async def put_secret(
    ctx: ServerContext, tenant_id: str, name: str, value: str
) -> tuple[SecretOut, bool]:
    """Set the tenant's secret ``name`` (sealed); whether it is a new one."""
    row, created = await ctx.records.put_secret(tenant_id, name, ctx.secrets.seal(value))
    return secret_out(row), created


async def delete_secret(ctx: ServerContext, tenant_id: str, name: str) -> None:
    """Remove the tenant's secret ``name``; one it lacks (another tenant's) is a 404."""
    if not await ctx.records.delete_secret(tenant_id, name):
        raise NotFoundError(f"secret {name!r} not found")


async def tenant_secrets(ctx: ServerContext, tenant_id: str, names: list[str]) -> dict[str, str]:
    """The values of the tenant's secrets among ``names``, unsealed (those it lacks are
    left out: the tool that needs one fails saying which)."""
    rows = await ctx.records.get_secrets(tenant_id, sorted(set(names)))
    return {row.name: ctx.secrets.unseal(row.value) for row in rows}

"""A tenant's named secrets as the server uses them: sealed on the way in, listed by
name, unsealed only for the run loop (:func:`tenant_secrets`) and for the node that
runs an instance using them; and the rotation of the key-encryption key
(:func:`rotate_key`)."""

from __future__ import annotations

import asyncio

from aether.errors import ConflictError, NotFoundError
from aether.model.secrets import KeyRotationOut, SecretOut
from aether.server.context import ServerContext
from aether.server.services.secretbox import sealed_key_id
from aether.store.records.schema import SecretRow

__all__ = [
    "delete_secret",
    "missing_secret",
    "put_secret",
    "rotate_key",
    "secret_out",
    "tenant_secrets",
]

_ROTATION = asyncio.Lock()  # one rotation at a time on this server


def secret_out(row: SecretRow, used_by: list[str] | None = None) -> SecretOut:
    return SecretOut(
        name=row.name, created_at=row.created_at, updated_at=row.updated_at, used_by=used_by or []
    )


def missing_secret(names: list[str], have: dict[str, str]) -> str | None:
    """The reason an instance or task cannot start: the first of ``names`` not set."""
    for name in names:
        if name not in have:
            return f"secret {name} is not set (aether secrets set {name})"
    return None


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


async def rotate_key(ctx: ServerContext) -> KeyRotationOut:
    """Replace the key-encryption key: a new key first in the keyring (the old ones still
    open), every stored data key re-wrapped with it, then the keyring cut to the new key
    (``secrets.key.old`` keeps the old ones, which still open)."""
    box = ctx.secrets
    if _ROTATION.locked():
        raise ConflictError("a key rotation is already running on this server")
    async with _ROTATION:
        previous = list(box.key_ids)
        new = await asyncio.to_thread(box.add_key)
        rewrapped = 0
        for _ in range(3):  # values sealed meanwhile by a server on the old key: again
            changed, skipped = await ctx.records.rewrap_sealed(box.rewrap)
            rewrapped += changed
            if not skipped:
                break
        rewrapped += await ctx.trust.rewrap(box.rewrap)  # the cluster CA's keys too
        counts = await ctx.records.sealed_key_ids(sealed_key_id)
        remaining = {k: n for k, n in counts.items() if k != new}
        if not remaining:
            await asyncio.to_thread(box.keep_only_current)
        return KeyRotationOut(
            key_id=new, previous=previous, rewrapped=rewrapped, remaining=remaining
        )

"""Revoked tokens, told to every server: their token caches forget them within a second.

Each server keeps the tokens it verified for ``TOKEN_CACHE_SECONDS`` (nodes'
``NODE_TOKEN_CACHE_SECONDS``; ``http/token_cache.py``). Revoking through one server
(a token revoked or rotated,
a node's credential replaced or revoked, a tenant deleted) forgets them there at
once; the other servers learn it from the shared state store: a
``revoked-tokens/{token_id}`` key, on a lease that outlives any cache entry, which
every server reads each ``POLL_SECONDS`` (``follow_revocations``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aether.server.context import ServerContext

__all__ = ["POLL_SECONDS", "PREFIX", "follow_revocations", "forget_tokens"]

PREFIX = "revoked-tokens/"
POLL_SECONDS = 1.0

log = logging.getLogger("aether.server")


def _forget_here(ctx: ServerContext, token_id: str) -> None:
    ctx.tokens.forget(token_id)
    ctx.sessions.forget_token(token_id)


async def forget_tokens(ctx: ServerContext, token_ids: Iterable[str]) -> None:
    """Forget revoked tokens here at once, and tell the other servers."""
    ids = list(token_ids)
    for token_id in ids:
        _forget_here(ctx, token_id)
    if not ids:
        return
    try:
        lease = await ctx.store.lease_grant(2 * ctx.tokens.longest)  # outlives any cache entry
        for token_id in ids:
            await ctx.store.put(PREFIX + token_id, b"", lease=lease)
    except Exception as exc:  # the revocation stands; other caches expire by themselves
        log.warning(
            "revoked tokens not announced to the other servers (%s); they may accept them "
            "for up to %.0f s more",
            exc,
            ctx.tokens.longest,
        )


async def follow_revocations(ctx: ServerContext) -> None:
    """Forget the tokens other servers revoked (runs on every server until cancelled)."""
    seen: set[tuple[str, int]] = set()
    while True:
        await asyncio.sleep(POLL_SECONDS)
        try:
            kvs, _ = await ctx.store.range(PREFIX)
        except Exception as exc:
            log.warning("reading revoked tokens failed (%s); trying again", exc)
            continue
        current = {(kv.key, kv.mod_revision) for kv in kvs}
        for key, _ in current - seen:
            _forget_here(ctx, key.removeprefix(PREFIX))
        seen = current

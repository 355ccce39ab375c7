"""Which servers are up: each keeps ``servers/{url}`` on a lease while it runs.

The key's value is the server's API URL, version, start time and node port URL; the lease
(``lease_ttl``) ends the key when a server stops or dies, so the state store
always lists the live servers (``GET /api/v1/status``'s ``servers``; the
console's overview).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from urllib.parse import quote

from aether import __version__
from aether.model.api import ServerOut
from aether.server.context import ServerContext
from aether.store.base import StoreError

__all__ = ["PREFIX", "announce", "live_servers", "node_urls"]

PREFIX = "servers/"
log = logging.getLogger("aether.server")


async def announce(ctx: ServerContext) -> None:
    """Keep this server's key alive until cancelled (then end it at once)."""
    key = PREFIX + quote(ctx.server_id, safe="")
    value = (
        ServerOut(
            url=ctx.server_id,
            version=__version__,
            started_at=time.time(),
            node_url=ctx.trust.node_urls[0] if ctx.trust.node_urls else None,
        )
        .model_dump_json()
        .encode()
    )
    ttl = ctx.settings.lease_ttl
    lease = 0
    try:
        while True:
            try:
                lease = await ctx.store.lease_grant(ttl)
                await ctx.store.put(key, value, lease=lease)
                while True:
                    await asyncio.sleep(ttl / 3)
                    await ctx.store.lease_keepalive(lease)
            except StoreError as exc:  # the store unreachable, or the lease lost: again
                log.warning("keeping this server's presence failed (%s); retrying", exc)
                await asyncio.sleep(ttl / 3)
    finally:
        if lease:
            with contextlib.suppress(Exception):
                await asyncio.shield(ctx.store.lease_revoke(lease))


async def live_servers(ctx: ServerContext) -> list[ServerOut]:
    kvs, _ = await ctx.store.range(PREFIX)
    out = []
    for kv in kvs:
        try:
            out.append(ServerOut.model_validate_json(kv.value))
        except ValueError:
            continue
    return sorted(out, key=lambda s: s.url)


async def node_urls(ctx: ServerContext) -> list[str]:
    """Every live server's node port URL (mutual TLS), this server's first."""
    urls = list(ctx.trust.node_urls)
    try:
        for server in await live_servers(ctx):
            if server.node_url and server.node_url not in urls:
                urls.append(server.node_url)
    except StoreError:
        pass
    return urls

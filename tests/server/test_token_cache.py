"""The token cache: how long an entry lives, and that forgetting wins over a lookup."""

from __future__ import annotations

import asyncio

from aether.server.http.token_cache import (
    NODE_TOKEN_CACHE_SECONDS,
    TOKEN_CACHE_SECONDS,
    TokenCache,
)
from aether.store.records import Principal
from tests.support.api import unique
from tests.support.server import RunningServer


def _principal(role: str, token_id: str) -> Principal:
    node = "n1" if role == "node" else None
    return Principal(tenant_id="t", tenant="default", role=role, token_id=token_id, node=node)


def test_a_node_credential_lives_longer_than_a_person_s_token() -> None:
    """Thousands of nodes call every second: a 10 s life was a database lookup per node
    every 10 s. A node's credential stays five minutes; its revocation is told to every
    server's cache (services/revocations.py), so the long life does not outlast it."""
    cache = TokenCache()
    cache.put("node-token", _principal("node", "n"), now=0.0)
    cache.put("admin-token", _principal("admin", "a"), now=0.0)
    later = TOKEN_CACHE_SECONDS + 0.1
    assert cache.get("admin-token", later) is None
    assert cache.get("node-token", later) is not None
    assert cache.get("node-token", NODE_TOKEN_CACHE_SECONDS + 0.1) is None


def test_entries_made_together_expire_apart() -> None:
    """Thousands of nodes register in a burst when a server starts: had their entries
    one life, they would all ask the database in the same second minutes later."""
    cache = TokenCache()
    for i in range(200):
        cache.put(f"node-{i}", _principal("node", str(i)), now=0.0)
    alive = [
        sum(cache.get(f"node-{i}", t) is not None for i in range(200))
        for t in (0.7 * NODE_TOKEN_CACHE_SECONDS, 0.875 * NODE_TOKEN_CACHE_SECONDS)
    ]
    assert alive[0] == 200  # none before 3/4 of the life
    assert 20 < alive[1] < 180  # about half by 7/8: spread, not all at once
    assert cache.longest == NODE_TOKEN_CACHE_SECONDS > TOKEN_CACHE_SECONDS


def test_forgetting_a_node_credential_drops_it_at_once() -> None:
    cache = TokenCache()
    cache.put("node-token", _principal("node", "n"), now=0.0)
    cache.forget("n")
    assert cache.get("node-token", 1.0) is None


def test_an_entry_in_use_is_renewed_in_the_background_and_a_revoked_one_dropped(
    server: RunningServer,
) -> None:
    """Was a stall: when thousands of node entries expired, each node's next push waited
    for a database lookup behind all the others. An entry past 3/4 of its life is now
    looked up again in the background while the cached principal answers."""
    node = unique("renewed")
    token = server.node_token(node)
    records = server.ctx.records

    async def scenario() -> tuple[int, bool, bool]:
        cache = TokenCache()
        first = await cache.resolve(token, records)
        assert first is not None and first.node == node
        entry = cache._entries[token]
        renew_at = entry[2]
        lookups = cache.lookups
        # past 3/4 of its life: answered from the cache, and renewed meanwhile
        assert cache.get(token, renew_at + 0.1, records) == first
        await asyncio.gather(*cache._renewing)
        renewed = cache._entries[token] != entry  # a new entry, with a life of its own
        # revoked without this cache being told: the next renewal drops it
        await records.revoke_node(node)
        later = cache._entries[token][2] + 0.1
        assert cache.get(token, later, records) is not None  # still this call's answer
        await asyncio.gather(*cache._renewing)
        return cache.lookups - lookups, renewed, token in cache._entries

    renewals, renewed, kept = server.run(scenario())
    assert renewals == 2 and renewed and not kept

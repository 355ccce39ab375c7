"""The token cache: how long an entry lives, and that forgetting wins over a lookup."""

from __future__ import annotations

from aether.server.http.token_cache import (
    NODE_TOKEN_CACHE_SECONDS,
    TOKEN_CACHE_SECONDS,
    TokenCache,
)
from aether.store.records import Principal


def _principal(role: str, token_id: str) -> Principal:
    node = "n1" if role == "node" else None
    return Principal(tenant_id="t", tenant="default", role=role, token_id=token_id, node=node)


def test_a_node_credential_lives_longer_than_a_person_s_token() -> None:
    """Thousands of nodes call every second: a 10 s life was a database lookup per node
    every 10 s. A node's credential stays a minute; its revocation is told to every
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
    one life, they would all ask the database in the same second a minute later."""
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

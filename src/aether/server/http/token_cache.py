"""Recently verified API tokens, kept in memory so hot routes skip the database."""

from __future__ import annotations

import asyncio
import random
import time

from aether.store.records import Principal, Records

__all__ = ["NODE_TOKEN_CACHE_SECONDS", "TOKEN_CACHE_SECONDS", "TOKEN_CACHE_SIZE", "TokenCache"]


TOKEN_CACHE_SECONDS = 10.0
#: a node's credential: every node calls every second, and its one change (revocation,
#: replacement) reaches every server's cache through ``services/revocations.py``; its
#: renewals are the database lookups a server makes for its nodes (2,000 nodes: ~10/s)
NODE_TOKEN_CACHE_SECONDS = 300.0
TOKEN_CACHE_SIZE = 10_000
MAX_RENEWING = 16  # background renewals at once (the rest renew on later calls)


class TokenCache:
    """Recently verified tokens, so a hot route (node telemetry) skips the database.

    An entry lives ``TOKEN_CACHE_SECONDS`` (a node's ``NODE_TOKEN_CACHE_SECONDS``:
    with thousands of nodes, a 10 s life was a database lookup per node every 10 s);
    revoking or rotating a token through this server forgets it at once
    (``forget``), and the other servers
    within a second (``services/revocations.py`` tells them through the state
    store; should that fail, their entries still expire after at most that long).
    Only successes are cached: a wrong token always asks the database. Calls
    that miss at the same moment share one lookup (thousands of nodes pushing
    every second would otherwise all ask the database when an entry expires), and
    entries made together expire apart (each lives a random 3/4 to all of its ttl).
    """

    def __init__(
        self,
        ttl: float = TOKEN_CACHE_SECONDS,
        size: int = TOKEN_CACHE_SIZE,
        node_ttl: float = NODE_TOKEN_CACHE_SECONDS,
    ) -> None:
        self.ttl = ttl
        self.node_ttl = node_ttl
        self.size = size
        self._entries: dict[str, tuple[Principal, float, float]] = {}  # until, renew at
        self._lookups: dict[str, asyncio.Future[Principal | None]] = {}
        self._renewing: set[asyncio.Task[Principal | None]] = set()
        self._generation = 0  # bumped by forget: a lookup begun before must not refill
        self.lookups = 0  # database lookups made (for tests and curiosity)

    def get(self, token: str, now: float, records: Records | None = None) -> Principal | None:
        """The cached principal, if its entry lives. Given ``records``, an entry past 3/4 of
        its life is looked up again in the background, so a token in use (a node's, every
        second) never waits for the database when its entry would have expired; a token
        revoked in the meantime is dropped by that lookup."""
        entry = self._entries.get(token)
        if entry is None:
            return None
        principal, until, renew_at = entry
        if until <= now or (
            principal.expires_at is not None and principal.expires_at <= time.time()
        ):
            self._entries.pop(token, None)
            return None
        if (
            records is not None
            and renew_at <= now
            and token not in self._lookups
            and len(self._renewing) < MAX_RENEWING
        ):
            renewal = asyncio.get_running_loop().create_task(self._lookup(token, records))
            self._renewing.add(renewal)
            renewal.add_done_callback(self._renewed)
        return principal

    def _renewed(self, renewal: asyncio.Task[Principal | None]) -> None:
        self._renewing.discard(renewal)
        if not renewal.cancelled():
            renewal.exception()  # the database is away: the entry lives until it expires

    def put(self, token: str, principal: Principal, now: float) -> None:
        if len(self._entries) >= self.size:
            self._entries.clear()  # crude, but bounded; the next calls refill it
        ttl = self.node_ttl if principal.role == "node" else self.ttl
        # a life between 3/4 and all of the ttl: the entries that thousands of nodes made
        # in one burst (a server's start) expire spread out, not in one stampede
        life = ttl * random.uniform(0.75, 1.0)
        self._entries[token] = (principal, now + life, now + life * 0.75)

    @property
    def longest(self) -> float:
        """The longest an entry lives (a revocation notice must outlive it)."""
        return max(self.ttl, self.node_ttl)

    def forget_user(self, user_id: str) -> None:
        """Drop every entry of the account's tokens (its role or membership changed)."""
        self._generation += 1
        for token, (principal, _, _) in list(self._entries.items()):
            if principal.user_id == user_id:
                del self._entries[token]

    def forget(self, token_id: str) -> None:
        """Drop every entry of this token (call it when the token is revoked)."""
        self._generation += 1
        for token, (principal, _, _) in list(self._entries.items()):
            if principal.token_id == token_id:
                del self._entries[token]

    async def resolve(self, token: str, records: Records) -> Principal | None:
        """The token's principal: from the cache, or one shared database lookup."""
        principal = self.get(token, time.monotonic(), records)
        if principal is not None:
            return principal
        pending = self._lookups.get(token)
        if pending is not None:
            return await asyncio.shield(pending)
        return await self._lookup(token, records)

    async def _lookup(self, token: str, records: Records) -> Principal | None:
        """Ask the database, once for every caller of the moment; keep a success (unless
        a token was forgotten meanwhile), drop the entry of a token no longer valid."""
        future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._lookups[token] = future
        generation = self._generation
        try:
            self.lookups += 1
            principal = await records.authenticate(token)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            self._lookups.pop(token, None)
        if principal is None:
            self._entries.pop(token, None)  # revoked or expired: a renewal ends its entry
        elif generation == self._generation:
            self.put(token, principal, time.monotonic())
        future.set_result(principal)
        return principal

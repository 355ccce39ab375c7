"""Leader election on any ``StateStore``, the etcd way.

The leader is whoever created ``key`` (bound to its lease). The key's
``create_revision`` is the leadership's epoch: it only grows, so guarding a
write with ``Leadership.fence()`` makes a deposed leader's late writes fail
instead of overwriting its successor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aether.store.base import (
    CompactedError,
    Compare,
    Event,
    EventType,
    Get,
    LeaseNotFoundError,
    Put,
    StateStore,
    StoreError,
)

__all__ = ["LeaderElection", "Leadership", "current_leader"]


@dataclass(eq=False)
class Leadership:
    """One term of office. ``lost`` is set once it ends, for whatever reason."""

    candidate: str
    key: str
    epoch: int  # create_revision of the leader key: the fencing token
    lease: int
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    # who held the key when this candidate last found it taken (None: it was vacant)
    previous: str | None = None

    def fence(self) -> Compare:
        """A txn compare that holds only while this term is still the current one."""
        return Compare(self.key, "create_revision", "==", self.epoch)


class LeaderElection:
    """Campaign for, hold and resign ``key`` on behalf of ``candidate``."""

    def __init__(
        self,
        store: StateStore,
        key: str = "leader",
        *,
        candidate: str,
        ttl: float = 3.0,
    ) -> None:
        if not candidate:
            raise ValueError("candidate must not be empty")
        if not ttl > 0:
            raise ValueError("ttl must be positive")
        self.store = store
        self.key = key
        self.candidate = candidate
        self.ttl = ttl
        self._leadership: Leadership | None = None
        self._keepalive: asyncio.Task[None] | None = None

    @property
    def leadership(self) -> Leadership | None:
        """The current term, or None when not leading."""
        term = self._leadership
        return None if term is None or term.lost.is_set() else term

    async def campaign(self) -> Leadership:
        """Block until this candidate leads; returns the new term."""
        if (term := self.leadership) is not None:
            return term
        previous: str | None = None
        while True:
            lease = await self.store.lease_grant(self.ttl)
            won = False
            try:
                result = await self.store.txn(
                    [Compare(self.key, "create_revision", "==", 0)],
                    [Put(self.key, self.candidate.encode(), lease=lease)],
                    [Get(self.key)],
                )
                won = result.succeeded
            finally:
                if not won:  # lost the race, or cancelled: do not leave the lease behind
                    with contextlib.suppress(StoreError):
                        await self.store.lease_revoke(lease)
            if won:
                term = Leadership(
                    self.candidate, self.key, result.revision, lease, previous=previous
                )
                self._leadership = term
                self._keepalive = asyncio.create_task(
                    self._keep(term), name=f"leader keepalive {self.key}"
                )
                return term
            seen = result.responses[0] if result.responses else None
            if isinstance(seen, list) and seen:
                previous = seen[0].value.decode(errors="replace")
            # The txn saw the key at result.revision; any later delete is >= +1.
            if not await self._wait_vacant(result.revision + 1):
                await asyncio.sleep(self.ttl / 3)  # watch ended early; do not spin

    async def resign(self) -> None:
        """Step down now: others need not wait for the lease to expire."""
        term, task = self._leadership, self._keepalive
        self._leadership = self._keepalive = None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if term is not None:
            term.lost.set()  # stop acting as leader before a successor can start
            with contextlib.suppress(StoreError):
                await self.store.lease_revoke(term.lease)

    async def _wait_vacant(self, from_revision: int) -> bool:
        """Wait until the key is deleted; False if the watch ended without that."""
        events = self.store.watch(self.key, from_revision)
        try:
            async for event in events:
                if event.kv.key == self.key and event.type is EventType.DELETE:
                    return True
        except CompactedError:
            return True  # history is gone: retry the txn, which reads the truth
        finally:
            await _aclose(events)
        return False

    async def _keep(self, term: Leadership) -> None:
        """Refresh the lease every ttl/3 and check the key is still ours."""
        interval = self.ttl / 3
        confirmed = time.monotonic()
        try:
            while True:
                await asyncio.sleep(interval)
                sent = time.monotonic()
                try:
                    await self.store.lease_keepalive(term.lease)
                    kv = await self.store.get(self.key)
                except LeaseNotFoundError:
                    return
                except StoreError:
                    # Unreachable store: the lease may already be gone server-side.
                    if time.monotonic() - confirmed >= self.ttl:
                        break
                    continue
                if kv is None or kv.create_revision != term.epoch:
                    break
                confirmed = sent
            # Deposed but our lease may live on: release whatever it still holds.
            term.lost.set()
            with contextlib.suppress(StoreError):
                await self.store.lease_revoke(term.lease)
        finally:
            term.lost.set()


async def current_leader(store: StateStore, key: str = "leader") -> str | None:
    """The candidate currently holding ``key``, or None."""
    kv = await store.get(key)
    return None if kv is None else kv.value.decode()


async def _aclose(events: AsyncIterator[Event]) -> None:
    """Close a watch promptly (async generators otherwise linger until collected)."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()

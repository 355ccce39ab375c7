"""A bounded in-memory cache of compressed data members, keyed by content sha256.

A data member (``aether.artifacts.framing``) is a pure function of a file's
content, so one computed while assembling one artifact serves every later
assembly that holds the same content, whatever the tenant: a tenant still has to
hold the blob (``missing`` is checked first), the member only saves compressing
it again. Least recently used members go first once ``max_bytes`` is reached.
Thread-safe (assemblies run on worker threads).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["DEFAULT_MEMBER_CACHE_BYTES", "MEMBERS", "MemberCache", "PinnedMembers"]

DEFAULT_MEMBER_CACHE_BYTES = 256 << 20


class MemberCache:
    def __init__(self, max_bytes: int = DEFAULT_MEMBER_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, sha256_hex: str) -> bytes | None:
        with self._lock:
            member = self._items.get(sha256_hex)
            if member is not None:
                self._items.move_to_end(sha256_hex)
            return member

    def pin(self, sha256_hexes: list[str]) -> PinnedMembers:
        """The members of these contents held now, kept for one assembly whatever is evicted."""
        with self._lock:
            held = {s: m for s in sha256_hexes if (m := self._items.get(s)) is not None}
            for s in held:
                self._items.move_to_end(s)
        return PinnedMembers(self, held)

    def put(self, sha256_hex: str, member: bytes) -> None:
        if len(member) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(sha256_hex, None)
            if old is not None:
                self._bytes -= len(old)
            self._items[sha256_hex] = member
            self._bytes += len(member)
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class PinnedMembers:
    """``MemberCache.pin``'s answer: reads from the pinned members, adds to the cache."""

    def __init__(self, cache: MemberCache, held: dict[str, bytes]) -> None:
        self._cache = cache
        self.held = held

    def get(self, sha256_hex: str) -> bytes | None:
        return self.held.get(sha256_hex)

    def put(self, sha256_hex: str, member: bytes) -> None:
        self._cache.put(sha256_hex, member)


#: The server process's cache (the assembly route and blob seeding share it).
MEMBERS = MemberCache()

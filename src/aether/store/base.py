"""The state store contract: an etcd-shaped, revisioned key-value store.

Every backend (``sqlite`` embedded, ``etcd`` distributed) honours this contract
and one suite (``tests/store/test_contract.py``) proves it against each.

Guarantees:

- Every successful write (put, delete, a transaction with at least one write)
  raises the store's revision by exactly one; all events of one write share it.
- ``Kv.create_revision`` is the revision that created the key, ``mod_revision``
  the last one that changed it, ``version`` counts changes since creation.
  A missing key compares as create_revision 0, mod_revision 0, version 0.
- ``txn`` is atomic: all compares are evaluated against one snapshot and either
  every ``success`` op or every ``failure`` op is applied.
- ``max_txn_ops`` is how many compares, and how many ops in each branch, one
  ``txn`` may carry (etcd refuses more than its ``--max-txn-ops``, 128 by
  default); batching writers (``aether.store.batch``) stay within it.
- ``watch(prefix, from_revision)`` yields every event on keys with that prefix
  whose revision is >= ``from_revision``, in revision order, then new events as
  they happen, until the iterator is closed. If history from
  ``from_revision`` has been compacted it raises ``CompactedError`` naming the
  oldest revision still available; the caller relists and watches again.
- A key put with a lease is deleted (with a DELETE event) when the lease expires
  or is revoked. ``keepalive`` on an unknown or expired lease raises
  ``LeaseNotFoundError``.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = [
    "CompactedError",
    "Compare",
    "Delete",
    "Event",
    "EventType",
    "Get",
    "Kv",
    "LeaseNotFoundError",
    "Put",
    "StateStore",
    "StoreError",
    "StoreUnavailableError",
    "TxnResult",
    "check_compare",
    "check_ops",
    "compare_holds",
]


class StoreError(Exception):
    """Base of every state store error."""


class CompactedError(StoreError):
    """The requested revision is older than the retained history."""

    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(
            f"revision {requested} has been compacted; oldest available is {compact_revision}"
        )
        self.requested = requested
        self.compact_revision = compact_revision


class LeaseNotFoundError(StoreError):
    """The lease does not exist or has expired."""


class StoreUnavailableError(StoreError):
    """The backend cannot be reached right now; retry later."""


@dataclass(frozen=True, slots=True)
class Kv:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class EventType(enum.StrEnum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    kv: Kv  # for DELETE: key, empty value, mod_revision = the deleting revision
    prev: Kv | None = None


CompareTarget = Literal["value", "version", "create_revision", "mod_revision", "lease"]
CompareOp = Literal["==", "!=", "<", ">"]


@dataclass(frozen=True, slots=True)
class Compare:
    key: str
    target: CompareTarget
    op: CompareOp
    value: bytes | int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Get:
    key: str
    prefix: bool = False


Op = Put | Delete | Get


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    # one entry per applied op: list of Kv for Get, number deleted for Delete, None for Put
    responses: list[list[Kv] | int | None] = field(default_factory=list)


class StateStore(Protocol):
    """The cluster state. All methods are safe to call concurrently."""

    # the most compares, and the most ops per branch, one txn may carry
    max_txn_ops: int

    async def get(self, key: str) -> Kv | None:
        """The current value of ``key``, or None."""
        ...

    async def range(self, prefix: str) -> tuple[list[Kv], int]:
        """All keys starting with ``prefix`` (sorted by key) and the store revision read at."""
        ...

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``key``; returns the new revision. Raises LeaseNotFoundError for a bad lease."""
        ...

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); returns how many were deleted."""
        ...

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """Apply ``success`` if every compare holds, else ``failure``, atomically."""
        ...

    def watch(self, prefix: str, from_revision: int) -> AsyncIterator[Event]:
        """Events under ``prefix`` from ``from_revision`` on (see the module docstring)."""
        ...

    async def revision(self) -> int:
        """The current store revision (0 for an empty, never written store)."""
        ...

    async def compact(self, revision: int) -> None:
        """Discard history older than ``revision``; watches from before it raise CompactedError."""
        ...

    async def lease_grant(self, ttl: float) -> int:
        """A new lease id that expires ``ttl`` seconds from now unless kept alive."""
        ...

    async def lease_keepalive(self, lease: int) -> float:
        """Restart the lease's TTL; returns the TTL. Raises LeaseNotFoundError."""
        ...

    async def lease_revoke(self, lease: int) -> None:
        """End the lease now, deleting its keys. Unknown leases are ignored."""
        ...

    async def close(self) -> None:
        """Release resources; pending watches end."""
        ...


# -- what both backends check before a transaction -------------------------------


def check_compare(c: Compare) -> None:
    if c.op not in ("==", "!=", "<", ">"):
        raise ValueError(f"unknown compare operator {c.op!r}")
    if c.target == "value":
        if not isinstance(c.value, bytes):
            raise TypeError(f"compare on value needs bytes, got {type(c.value).__name__}")
    elif c.target in ("version", "create_revision", "mod_revision", "lease"):
        if isinstance(c.value, bool) or not isinstance(c.value, int):
            raise TypeError(f"compare on {c.target} needs an int, got {type(c.value).__name__}")
    else:
        raise ValueError(f"unknown compare target {c.target!r}")


def compare_holds(c: Compare, kv: Kv | None) -> bool:
    """Whether ``c`` holds for ``kv`` (None: the key is missing), as the backends judge it.

    A missing key compares as revisions, version and lease 0; as in etcd, a value
    compare on a missing key never holds.
    """
    if c.target == "value":
        return kv is not None and _ordered(kv.value, c.op, c.value)
    actual: int = 0 if kv is None else getattr(kv, c.target)
    return _ordered(actual, c.op, c.value)


def _ordered(actual: int | bytes, op: str, expected: int | bytes) -> bool:
    if op == "==":
        return actual == expected
    if op == "!=":
        return actual != expected
    if isinstance(actual, bytes) and isinstance(expected, bytes):
        return actual < expected if op == "<" else actual > expected
    if isinstance(actual, int) and isinstance(expected, int):
        return actual < expected if op == "<" else actual > expected
    raise TypeError(f"cannot compare {actual!r} with {expected!r}")


def check_ops(ops: Sequence[Op]) -> None:
    """Reject writes to one key twice in a txn, as etcd does, so both backends agree."""
    puts: set[str] = set()
    for op in ops:
        if isinstance(op, Put):
            if op.key in puts:
                raise ValueError(f"duplicate key {op.key!r} in txn")
            puts.add(op.key)
        elif not isinstance(op, Delete | Get):
            raise TypeError(f"unknown txn op {op!r}")
    for op in ops:
        if isinstance(op, Delete):
            for key in puts:
                if key == op.key or (op.prefix and key.startswith(op.key)):
                    raise ValueError(f"key {key!r} is both put and deleted in txn")

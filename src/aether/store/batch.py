"""Many fenced, conditional writes in few transactions (a leader's pass, batched).

A :class:`Write` is what one transaction would apply on its own: ``ops``
guarded by ``compare``. :func:`apply_fenced` applies a sequence of writes with
the outcome of applying each one in order as ``txn([fence, *compare], ops)``,
but in far fewer transactions:

- a batch is a run of consecutive writes whose keys (compared or written) are
  disjoint, so evaluating all their compares on one snapshot is the same as
  evaluating each after the writes before it; a write that touches a key of the
  current batch (or deletes a prefix) starts a new one (:func:`batches`);
- a batch carries at most ``store.max_txn_ops`` compares (the fence included)
  and ops, and at most ``MAX_TXN_BYTES`` of keys and values (etcd refuses a
  request over its ``--max-request-bytes``, 1.5 MiB by default);
- a batch whose compares fail reads the fence key in its failure branch. If the
  fence no longer holds, the writer has been deposed: nothing of the batch was
  written and nothing more is tried (``Applied.fenced``). Otherwise some write's
  own condition failed, and the batch is applied again one write at a time, so
  one conflicting key does not drop the others.

Every transaction is guarded by the fence, so a deposed writer writes nothing
from the moment its successor's term begins, exactly as with one transaction
per write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aether.store.base import (
    Compare,
    Delete,
    Get,
    Kv,
    Op,
    Put,
    StateStore,
    TxnResult,
    compare_holds,
)

__all__ = ["MAX_TXN_BYTES", "Applied", "Write", "apply_fenced", "batches"]

# keys and values per batch: well inside etcd's default 1.5 MiB request limit
MAX_TXN_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Write:
    """``ops`` (puts and deletes), applied only if every compare holds."""

    compare: tuple[Compare, ...]
    ops: tuple[Op, ...]


@dataclass(frozen=True, slots=True)
class Applied:
    """What :func:`apply_fenced` did.

    ``applied[i]``: write ``i`` was applied. ``fenced``: the fence failed, so the
    writer is deposed; the writes after the first refused batch were not tried.
    """

    applied: tuple[bool, ...]
    fenced: bool
    transactions: int


def batches(writes: Sequence[Write], max_ops: int, max_bytes: int = MAX_TXN_BYTES) -> list[range]:
    """Split ``writes`` into consecutive runs that can share one fenced transaction.

    Each run: disjoint keys, at most ``max_ops`` compares (one is the fence's)
    and ``max_ops`` ops, at most ``max_bytes`` of keys and values. A single write
    over a limit is a run of its own (the store judges it, as it would alone).
    """
    if max_ops < 2:
        raise ValueError("max_ops must be at least 2 (the fence and one compare)")
    runs: list[range] = []
    start = 0
    keys: set[str] = set()
    compares = ops = size = 0
    wide = False  # the current run holds a prefix delete: nothing may join it
    for i, write in enumerate(writes):
        touched = {c.key for c in write.compare} | {op.key for op in write.ops}
        prefix = any(isinstance(op, Delete | Get) and op.prefix for op in write.ops)
        bytes_ = sum(_size(op) for op in write.ops)
        fits = (
            i > start
            and not wide
            and not prefix
            and keys.isdisjoint(touched)
            and 1 + compares + len(write.compare) <= max_ops
            and ops + len(write.ops) <= max_ops
            and size + bytes_ <= max_bytes
        )
        if i > start and not fits:
            runs.append(range(start, i))
            start, keys, compares, ops, size = i, set(), 0, 0, 0
        keys |= touched
        compares += len(write.compare)
        ops += len(write.ops)
        size += bytes_
        wide = prefix
    if start < len(writes):
        runs.append(range(start, len(writes)))
    return runs


async def apply_fenced(
    store: StateStore,
    fence: Compare,
    writes: Sequence[Write],
    *,
    max_ops: int | None = None,
    max_bytes: int = MAX_TXN_BYTES,
) -> Applied:
    """Apply ``writes`` in order, each guarded by ``fence``, in batches (module docstring).

    ``max_ops``: a lower limit than the store's ``max_txn_ops`` (never a higher one).
    """
    limit = store.max_txn_ops if max_ops is None else min(max_ops, store.max_txn_ops)
    applied = [False] * len(writes)
    transactions = 0
    for run in batches(writes, limit, max_bytes):
        chunk = [writes[i] for i in run]
        result = await _fenced_txn(store, fence, chunk)
        transactions += 1
        if result.succeeded:
            for i in run:
                applied[i] = True
            continue
        if _deposed(fence, result):
            return Applied(tuple(applied), True, transactions)
        if len(chunk) == 1:
            continue  # its own condition failed: nothing to retry
        for i in run:
            result = await _fenced_txn(store, fence, [writes[i]])
            transactions += 1
            if result.succeeded:
                applied[i] = True
            elif _deposed(fence, result):
                return Applied(tuple(applied), True, transactions)
    return Applied(tuple(applied), False, transactions)


async def _fenced_txn(store: StateStore, fence: Compare, chunk: Sequence[Write]) -> TxnResult:
    return await store.txn(
        [fence, *(c for write in chunk for c in write.compare)],
        [op for write in chunk for op in write.ops],
        [Get(fence.key)],
    )


def _deposed(fence: Compare, result: TxnResult) -> bool:
    """The failed transaction's read of the fence key says the fence does not hold."""
    found = result.responses[0] if result.responses else None
    kv: Kv | None = found[0] if isinstance(found, list) and found else None
    return not compare_holds(fence, kv)


def _size(op: Op) -> int:
    if isinstance(op, Put):
        return len(op.key.encode()) + len(op.value)
    return len(op.key.encode())

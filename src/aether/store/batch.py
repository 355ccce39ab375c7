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

With ``in_flight`` > 1, up to that many consecutive batches are sent at once
when no key is in two of them (they are independent, so the outcome is the one
of sending them in order), which overlaps etcd's raft round trip with the
encoding of the next batch. Only when the writer is deposed meanwhile can a
later batch of such a group land while an earlier one is refused.

Every transaction is guarded by the fence, so a deposed writer writes nothing
from the moment its successor's term begins, exactly as with one transaction
per write.
"""

from __future__ import annotations

import asyncio
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
        touched = _keys(write)
        prefix = _has_prefix(write)
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
    in_flight: int = 1,
) -> Applied:
    """Apply ``writes``, each guarded by ``fence``, in batches (module docstring).

    ``max_ops``: a lower limit than the store's ``max_txn_ops`` (never a higher one).
    ``in_flight``: how many consecutive batches of disjoint keys may be sent at once.
    """
    if in_flight < 1:
        raise ValueError("in_flight must be at least 1")
    limit = store.max_txn_ops if max_ops is None else min(max_ops, store.max_txn_ops)
    applied = [False] * len(writes)
    transactions = 0
    for group in _groups(writes, batches(writes, limit, max_bytes), in_flight):
        outcomes = await asyncio.gather(
            *(_apply_run(store, fence, writes, run, applied) for run in group)
        )
        transactions += sum(count for count, _ in outcomes)
        if any(fenced for _, fenced in outcomes):
            return Applied(tuple(applied), True, transactions)
    return Applied(tuple(applied), False, transactions)


def _groups(writes: Sequence[Write], runs: list[range], in_flight: int) -> list[list[range]]:
    """Consecutive runs, at most ``in_flight`` a group, no key in two runs of one group.

    The runs of a group are independent, so sending them at once has the outcome
    of sending them one after another.
    """
    groups: list[list[range]] = []
    keys: set[str] = set()
    wide = False  # the current group holds a prefix delete, which may cover any key
    for run in runs:
        touched = {k for i in run for k in _keys(writes[i])}
        prefix = any(_has_prefix(writes[i]) for i in run)
        if (
            groups
            and len(groups[-1]) < in_flight
            and not wide
            and not prefix
            and keys.isdisjoint(touched)
        ):
            groups[-1].append(run)
            keys |= touched
        else:
            groups.append([run])
            keys, wide = touched, prefix
    return groups


async def _apply_run(
    store: StateStore, fence: Compare, writes: Sequence[Write], run: range, applied: list[bool]
) -> tuple[int, bool]:
    """Apply one run, falling back to one write at a time: (transactions, fenced)."""
    chunk = [writes[i] for i in run]
    result = await _fenced_txn(store, fence, chunk)
    if result.succeeded:
        for i in run:
            applied[i] = True
        return 1, False
    if _deposed(fence, result):
        return 1, True
    if len(chunk) == 1:
        return 1, False  # its own condition failed: nothing to retry
    transactions = 1
    for i in run:
        result = await _fenced_txn(store, fence, [writes[i]])
        transactions += 1
        if result.succeeded:
            applied[i] = True
        elif _deposed(fence, result):
            return transactions, True
    return transactions, False


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


def _keys(write: Write) -> set[str]:
    return {c.key for c in write.compare} | {op.key for op in write.ops}


def _has_prefix(write: Write) -> bool:
    return any(isinstance(op, Delete | Get) and op.prefix for op in write.ops)


def _size(op: Op) -> int:
    if isinstance(op, Put):
        return len(op.key.encode()) + len(op.value)
    return len(op.key.encode())

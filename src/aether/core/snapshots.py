"""Snapshot retention: which checkpoints of stateful instances to keep.

A pure decision over snapshot rows (no I/O, no clock: ``now`` is passed in);
the leader's garbage collection applies it. Tiers by age:

- **hot** (younger than 1 h): every snapshot is kept;
- **warm** (younger than 24 h): the newest of each clock hour;
- **cold** (younger than 7 days): the newest of each day (UTC);
- older ones are deleted.

Then at most ``keep_per_app`` of what is left, newest first, per app. Whatever
these rules say, three kinds are always kept: an ``orphaned`` snapshot (the
newer state a returning node kept, see docs/concepts.md) for
``ORPHAN_KEEP_SECONDS`` (7 days) whatever its bucket or the app's count, the
newest checkpoint of each app that is not an orphan (the state a lost
stateful instance restores from), and every digest in
``protected`` (a snapshot an instance still names in ``restore_from``, or the
checkpoint a migration is about to restore). A stored blob is deleted only
when no kept row names its digest (rows of several apps or tenants may share
one: snapshots are content-addressed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "COLD_SECONDS",
    "HOT_SECONDS",
    "ORPHAN_KEEP_SECONDS",
    "WARM_SECONDS",
    "RetentionPlan",
    "SnapshotRow",
    "Tier",
    "missing_seconds",
    "plan_retention",
    "tier_of",
]

HOT_SECONDS = 3600.0
WARM_SECONDS = 24 * 3600.0
COLD_SECONDS = 7 * 24 * 3600.0
ORPHAN_KEEP_SECONDS = 7 * 24 * 3600.0  # an orphan is kept this long, whatever else

Tier = Literal["hot", "warm", "cold", "expired"]


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    id: str
    tenant_id: str
    app: str
    digest: str
    created_at: float  # seconds since the epoch
    status: str = "stored"  # stored | orphaned | restored


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    keep: dict[str, Tier]  # row id → its tier now
    delete: tuple[str, ...]  # row ids to delete
    delete_blobs: tuple[str, ...]  # digests no kept row names any more


def missing_seconds(orphan_taken: float, restored_taken: float | None) -> float:
    """How much time of writes a replacement restored from a snapshot taken at
    ``restored_taken`` (None: it started empty) misses, against an orphan taken at
    ``orphan_taken``: the orphan's taken_at minus the restored one's, never negative."""
    if restored_taken is None:
        return orphan_taken
    return max(0.0, orphan_taken - restored_taken)


def tier_of(age: float) -> Tier:
    """The tier of a snapshot ``age`` seconds old."""
    if age < HOT_SECONDS:
        return "hot"
    if age < WARM_SECONDS:
        return "warm"
    if age < COLD_SECONDS:
        return "cold"
    return "expired"


def _bucket(tier: Tier, created_at: float) -> int | None:
    """Snapshots of one app sharing a bucket keep only the newest (None: keep all)."""
    if tier == "warm":
        return int(created_at // HOT_SECONDS)
    if tier == "cold":
        return int(created_at // WARM_SECONDS)
    return None


def plan_retention(
    rows: Iterable[SnapshotRow],
    *,
    now: float,
    keep_per_app: int,
    protected: Iterable[str] = (),
) -> RetentionPlan:
    """What to keep and delete (see the module docstring)."""
    pinned = set(protected)
    by_app: dict[tuple[str, str], list[SnapshotRow]] = defaultdict(list)
    all_rows = list(rows)
    for row in all_rows:
        by_app[(row.tenant_id, row.app)].append(row)

    keep: dict[str, Tier] = {}
    for group in by_app.values():
        group.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        seen: set[tuple[Tier, int]] = set()
        survivors: list[SnapshotRow] = []
        for row in group:
            tier = tier_of(max(0.0, now - row.created_at))
            if tier == "expired":
                continue
            bucket = _bucket(tier, row.created_at)
            if bucket is not None:
                if (tier, bucket) in seen:
                    continue
                seen.add((tier, bucket))
            survivors.append(row)
        kept = {row.id for row in survivors[: max(0, keep_per_app)]}
        checkpoints = [row for row in group if row.status != "orphaned"]
        if checkpoints:
            kept.add(checkpoints[0].id)  # the newest: the app's state
        kept.update(
            row.id
            for row in group
            if row.status == "orphaned" and now - row.created_at < ORPHAN_KEEP_SECONDS
        )
        kept.update(row.id for row in group if row.digest in pinned)
        for row in group:
            if row.id in kept:
                keep[row.id] = tier_of(max(0.0, now - row.created_at))

    delete = tuple(sorted(row.id for row in all_rows if row.id not in keep))
    kept_digests = {row.digest for row in all_rows if row.id in keep} | pinned
    blobs = sorted({row.digest for row in all_rows if row.id not in keep} - kept_digests)
    return RetentionPlan(keep=keep, delete=delete, delete_blobs=tuple(blobs))

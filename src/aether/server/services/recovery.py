"""Stateful apps' recovery point: what a lost instance's replacement misses, orphans.

- ``lost_note``: what the ``node_lost`` event of a stateful instance says about the
  checkpoint its replacement restores (its age when the node went silent);
- ``orphan_blueprint`` / ``record_orphan``: a returning node stores the newer state
  of an instance the leader already replaced as an ``orphaned`` snapshot; the event
  says how much time of writes the replacement is missing;
- ``restore_snapshot``: ``aether snapshots restore``: the app's instance is replaced
  (a stateful migration) by one restored from the chosen snapshot.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from aether.core.snapshots import missing_seconds
from aether.errors import ConflictError, NotFoundError
from aether.model.cluster import Blueprint, InstanceRecord, parse_instance_key
from aether.model.names import split_cluster_name
from aether.server.context import ServerContext
from aether.server.services.cluster import ClusterSnapshot, dump, read_snapshot
from aether.server.services.migrations import request_migration
from aether.store.base import Compare, Put
from aether.store.records.repo import epoch
from aether.store.records.schema import MigrationRecord, SnapshotRecord

__all__ = [
    "lost_note",
    "orphan_blueprint",
    "record_orphan",
    "restore_snapshot",
]

log = logging.getLogger("aether.recovery")


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S UTC")


def _taken(row: SnapshotRecord) -> float:
    return epoch(row.taken_at or row.created_at)


async def lost_note(
    ctx: ServerContext, record: InstanceRecord, latest: str | None, now: float
) -> str:
    """For a stateful instance lost with its node: what its replacement restores."""
    if not record.spec.stateful:
        return ""
    interval = record.spec.checkpoint.interval
    rpo = f"RPO {interval:g}s" if interval else "periodic checkpoints off"
    if latest is None:
        return f"; no checkpoint stored: the replacement starts empty ({rpo})"
    rows = await ctx.records.find_snapshot(record.tenant, record.app, latest)
    if not rows:
        return f"; the replacement restores {latest[:19]} ({rpo})"
    silent = now - ctx.settings.lease_ttl  # about when the node was last heard from
    age = max(0.0, silent - max(_taken(r) for r in rows))
    return (
        f"; the replacement restores checkpoint {latest[:19]}, taken {age:.1f}s before the "
        f"node went silent: writes made on it in those {age:.1f}s are lost unless the node "
        f"returns, which keeps them as an orphaned snapshot ({rpo})"
    )


async def orphan_blueprint(ctx: ServerContext, node: str, key: str) -> Blueprint:
    """The live app an orphan's instance key (of ``node``) belongs to (404 if none)."""
    try:
        key_node, app, _, _ = parse_instance_key(key)
    except ValueError:
        raise NotFoundError(f"{key!r} is not an instance key") from None
    if key_node != node:
        raise NotFoundError(f"instance {key!r} was not node {node!r}'s")
    kv = await ctx.store.get(f"blueprints/{app}")
    if kv is None:
        raise NotFoundError(f"app {app!r} no longer exists: its state is not kept")
    return Blueprint.model_validate_json(kv.value)


def _replacement(snap: ClusterSnapshot, app: str, key: str) -> InstanceRecord | None:
    """The instance of ``app`` serving now in place of ``key`` (same index first)."""
    _, _, _, n = parse_instance_key(key)
    found = [r for r, _ in snap.instances.values() if r.app == app and r.key != key]
    found.sort(key=lambda r: (r.n != n, r.key))
    return found[0] if found else None


async def record_orphan(ctx: ServerContext, bp: Blueprint, row: SnapshotRecord) -> str:
    """Write the event of an orphan stored; returns its message."""
    snap = await read_snapshot(ctx.store)
    replacement = _replacement(snap, bp.app, row.instance)
    restored = replacement.restore_from if replacement else None
    restored_taken: float | None = None
    if restored:
        rows = [
            r
            for r in await ctx.records.find_snapshot(bp.tenant, bp.app, restored)
            if replacement is None or r.instance != replacement.key
        ]
        restored_taken = max((_taken(r) for r in rows), default=None)
    taken = _taken(row)
    gap = missing_seconds(taken, restored_taken)
    where = f"replacement {replacement.key}" if replacement else "the replacement"
    started = "started empty"
    if restored:
        started = f"started from {restored[:19]} (taken {_clock(restored_taken or 0)})"
    gap_text = f"{gap:.1f}s" if restored else "all"
    message = (
        f"node {row.node} returned holding {row.instance}, which was replaced while it was "
        f"away; its state (as of {_clock(taken)}) is kept as orphaned "
        f"snapshot {row.digest}. The {where} {started}: it is missing {gap_text} of writes. "
        f"`aether snapshots restore {split_cluster_name(bp.app)[0]} {row.digest}` brings "
        "them back"
    )
    await ctx.records.add_event(bp.deployment_id, "state_orphaned", message)
    log.warning("%s", message)
    return message


async def _mark_restore(ctx: ServerContext, key: str, digest: str | None) -> None:
    """Tell the planner the migration's replacement restores ``digest`` (CAS)."""
    for _ in range(10):
        kv = await ctx.store.get(key)
        if kv is None:
            raise NotFoundError(f"instance {key} vanished before it could be restored")
        record = InstanceRecord.model_validate_json(kv.value)
        updated = record.model_copy(update={"restore": digest})
        result = await ctx.store.txn(
            [Compare(key, "mod_revision", "==", kv.mod_revision)], [Put(key, dump(updated))]
        )
        if result.succeeded:
            return
    raise ConflictError(f"instance {key} kept changing; ask again")


async def restore_snapshot(
    ctx: ServerContext, tenant_id: str, app: str, digest: str, n: int | None
) -> MigrationRecord:
    """Replace the app's instance by one restored from ``digest`` (a stateful migration:
    the instance it replaces is checkpointed first, so its own state is kept too)."""
    plain = split_cluster_name(app)[0]  # ``app`` is the cluster name
    rows = await ctx.records.find_snapshot(tenant_id, app, digest)
    if not rows:
        raise NotFoundError(f"snapshot {digest} of app {plain!r} not found")
    snap = await read_snapshot(ctx.store)
    entry = snap.blueprints.get(app)
    if entry is None or entry[0].tenant != tenant_id:
        raise NotFoundError(f"app {plain!r} not found")
    if not entry[0].spec.stateful:
        raise ConflictError(f"app {plain!r} is not stateful: it has no state to restore")
    serving = sorted(
        (r for r, _ in snap.instances.values() if r.app == app and r.version == entry[0].version),
        key=lambda r: r.n,
    )
    chosen = [r for r in serving if n is None or r.n == n]
    if not chosen:
        which = f"instance {n}" if n is not None else "a serving instance"
        raise ConflictError(f"app {plain!r} has no {which} to replace", code="not_serving")
    target = chosen[0]
    await _mark_restore(ctx, target.key, digest)
    try:
        row = await request_migration(
            ctx, tenant_id, target.key, None, reason=f"restore snapshot {digest} (by an operator)"
        )
    except Exception:
        await _mark_restore(ctx, target.key, None)
        raise
    await ctx.records.set_snapshot_status(
        [r.id for r in rows if r.status == "orphaned"], "restored"
    )
    return row

"""Migrations: asking an instance to move, following the move, keeping snapshots.

The planner (``core.scheduler``) does the moving; this module is the shell
around it:

- ``request_migration`` validates an operator's request and marks the instance
  (``migrate_to``, ``migration_id``) with compare-and-swap, recording a row in
  ``migrations``; ``drain_node`` does that for every instance of a node;
- ``track`` runs on the leader after each reconcile pass and moves each open
  migration's row along from what the state store shows (level-triggered:
  requested → checkpointing → restoring → done, or failed with the reason),
  writing a deployment event at each step;
- ``latest_snapshots`` is what a new stateful instance restores;
- ``apply_retention`` deletes the snapshots ``core.snapshots`` no longer keeps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aether import tracing
from aether.core.lifecycle import Command, State
from aether.core.scheduler import Action, Unplaceable, check_target
from aether.core.snapshots import SnapshotRow, plan_retention
from aether.errors import BadRequestError, ConflictError, NotFoundError
from aether.model.cluster import Blueprint, InstanceRecord
from aether.model.migrations import MIGRATION_FINAL, MigrationOut
from aether.model.names import split_cluster_name
from aether.server.context import ServerContext
from aether.server.services.cluster import ClusterSnapshot, dump, read_snapshot
from aether.store.base import Compare, Kv, Put
from aether.store.records.repo import epoch
from aether.store.records.schema import MigrationRecord

__all__ = [
    "Progress",
    "apply_retention",
    "drain_node",
    "latest_snapshots",
    "migration_out",
    "progress",
    "request_migration",
    "resolve_instance",
    "snapshot_digests",
    "track",
]

log = logging.getLogger("aether.migrations")

_SERVING = (Command.LOAD, Command.ACTIVATE)


def migration_out(row: MigrationRecord) -> MigrationOut:
    return MigrationOut.model_validate(row, from_attributes=True)


# -- asking ---------------------------------------------------------------------------


def resolve_instance(snap: ClusterSnapshot, tenant_id: str, ref: str) -> tuple[InstanceRecord, Kv]:
    """The caller's instance named by ``ref``: its key (``instances/NODE/APP@V/N``, with
    or without the prefix) or ``APP/N`` (the serving copy of that index; APP is the
    tenant's plain name)."""
    ref = ref.strip().strip("/")
    key = ref if ref.startswith("instances/") else f"instances/{ref}"
    found = snap.instances.get(key)
    if found is None and ref.count("/") == 1:
        app, _, n = ref.partition("/")
        app = app.partition("@")[0]
        if n.isdigit():
            copies = [
                entry
                for entry in snap.instances.values()
                if split_cluster_name(entry[0].app)[0] == app
                and entry[0].tenant == tenant_id
                and entry[0].n == int(n)
            ]
            # the serving copy of the newest version first
            copies.sort(key=lambda e: (e[0].command not in _SERVING, -e[0].version, e[0].key))
            found = copies[0] if copies else None
    if found is None or found[0].tenant != tenant_id:
        raise NotFoundError(
            f"instance {ref!r} not found: give its key or APP/N as `aether status` or "
            "GET /api/v1/instances show it"
        )
    return found


async def _open(ctx: ServerContext, migration_id: str) -> bool:
    if not migration_id:
        return False
    try:
        row = await ctx.records.get_migration(None, migration_id)
    except NotFoundError:
        return False
    return row.status not in MIGRATION_FINAL


async def _mark(
    ctx: ServerContext, key: str, migration_id: str, to: str | None
) -> InstanceRecord | None:
    """Set ``migrate_to`` and ``migration_id`` on an instance (CAS); None if it is gone."""
    for _ in range(10):
        kv = await ctx.store.get(key)
        if kv is None:
            return None
        record = InstanceRecord.model_validate_json(kv.value)
        updated = record.model_copy(update={"migrate_to": to or "", "migration_id": migration_id})
        result = await ctx.store.txn(
            [Compare(key, "mod_revision", "==", kv.mod_revision)], [Put(key, dump(updated))]
        )
        if result.succeeded:
            return updated
    raise ConflictError(f"instance {key} kept changing; ask again")


async def request_migration(
    ctx: ServerContext,
    tenant_id: str,
    ref: str,
    to: str | None,
    *,
    reason: str = "requested by an operator",
) -> MigrationRecord:
    """Ask the planner to move an instance (to node ``to``, or anywhere else)."""
    with tracing.span("migration: request", attributes={"aether.instance": ref, "aether.to": to}):
        return await _request_migration(ctx, tenant_id, ref, to, reason=reason)


async def _request_migration(
    ctx: ServerContext, tenant_id: str, ref: str, to: str | None, *, reason: str
) -> MigrationRecord:
    snap = await read_snapshot(ctx.store)
    record, _ = resolve_instance(snap, tenant_id, ref)
    key = record.key
    if record.command not in _SERVING or record.state is State.FAILED:
        state = record.state.value if record.state else "none"
        raise ConflictError(
            f"instance {key} is not serving (command {record.command.value}, state {state}); "
            "only a serving instance can be migrated",
            code="not_serving",
        )
    if record.migrate_to is not None and await _open(ctx, record.migration_id):
        raise ConflictError(
            f"instance {key} is already moving (migration {record.migration_id}); "
            f"see `aether migrations {split_cluster_name(record.app)[0]}`",
            code="already_migrating",
        )
    entry = snap.blueprints.get(record.app)
    if entry is None or entry[0].tenant != tenant_id:
        plain = split_cluster_name(record.app)[0]
        raise ConflictError(f"app {plain!r} has no live deployment to migrate within")
    bp: Blueprint = entry[0]
    if record.version != bp.version:
        raise ConflictError(
            f"instance {key} runs v{record.version} while v{bp.version} rolls out: "
            "the rollout replaces it anyway",
            code="rolling_out",
        )
    (want,) = [d for d in snap.desired() if d.app == record.app]
    nodes = snap.node_views()
    instances = snap.instance_views()
    if to is not None:
        if to == record.node:
            raise BadRequestError(f"instance {key} already runs on node {to!r}: pick another")
        if to not in snap.nodes and to not in {n.id for n in await ctx.records.list_nodes()}:
            raise NotFoundError(f"node {to!r} not found; `aether nodes` lists them")
        why = check_target(to, want, nodes, instances)
        if why is not None:
            raise ConflictError(f"cannot migrate {key} to {to}: {why}", code="bad_target")
    else:
        problems = [
            check_target(node.id, want, nodes, instances)
            for node in nodes
            if node.id != record.node
        ]
        if not problems or all(p is not None for p in problems):
            detail = "; ".join(p for p in problems if p) or "it is the only live node"
            raise ConflictError(f"no other node can take {key}: {detail}", code="no_target")
    row = await ctx.records.create_migration(
        tenant_id=tenant_id,
        app=record.app,
        instance=key,
        from_node=record.node,
        to_node=to,
        kind="stateful" if bp.spec.stateful else "stateless",
        reason=reason,
    )
    try:
        marked = await _mark(ctx, key, row.id, to)
    except ConflictError as exc:
        await ctx.records.update_migration(row.id, status="failed", reason=str(exc))
        raise
    if marked is None:
        await ctx.records.update_migration(
            row.id, status="failed", reason=f"instance {key} vanished before it could move"
        )
        raise NotFoundError(f"instance {key} vanished before it could move")
    await ctx.records.add_event(
        record.deployment_id,
        "migration_requested",
        f"instance {record.n} on {record.node} to move to {to or 'another node'} "
        f"({row.kind}, migration {row.id}): {reason}",
    )
    return row


async def drain_node(ctx: ServerContext, node: str, reason: str) -> list[MigrationRecord]:
    """Mark every serving instance of ``node`` to move (its node was drained).

    The planner moves them off a draining node anyway; marking them makes each
    move a tracked migration. Instances already moving, or of a version being
    rolled out of, are left alone. Call it before setting the drain flag: a
    replacement the planner places before the mark lands is not linked to the
    migration (``progress`` still sees the move through).
    """
    snap = await read_snapshot(ctx.store)
    rows: list[MigrationRecord] = []
    for key, (record, _) in sorted(snap.instances.items()):
        # serving, or (stateful) already stopping to checkpoint for this drain
        checkpointing = record.command is Command.DEACTIVATE and record.checkpoint
        if record.node != node or not (record.command in _SERVING or checkpointing):
            continue
        if record.state is State.FAILED:
            continue
        entry = snap.blueprints.get(record.app)
        if entry is None or entry[0].version != record.version:
            continue
        if record.migrate_to is not None and await _open(ctx, record.migration_id):
            continue
        row = await ctx.records.create_migration(
            tenant_id=record.tenant,
            app=record.app,
            instance=key,
            from_node=node,
            to_node=None,
            kind="stateful" if entry[0].spec.stateful else "stateless",
            reason=reason,
        )
        if await _mark(ctx, key, row.id, None) is None:
            await ctx.records.update_migration(
                row.id, status="failed", reason=f"instance {key} vanished before it could move"
            )
            continue
        await ctx.records.add_event(
            record.deployment_id,
            "migration_requested",
            f"instance {record.n} on {node} to move ({row.kind}, migration {row.id}): {reason}",
        )
        rows.append(row)
    return rows


# -- following ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    """What a migration's row should say now."""

    status: str
    to_node: str | None
    snapshot: str | None
    replacement: str | None
    reason: str


def progress(
    row: MigrationRecord,
    source: InstanceRecord | None,
    replacement: InstanceRecord | None,
    *,
    waiting: str | None = None,
    expired: bool = False,
    app_whole: bool = False,
    latest: str | None = None,
) -> Progress:
    """A pure reading of the state store for one migration.

    ``source`` is the instance that moves (None once gone), ``replacement`` the
    instance placed for it (it carries the migration's id), ``waiting`` why the
    planner cannot place it yet; ``expired`` means it ran past the timeout;
    ``app_whole`` that the app has all the ACTIVE instances it wants; ``latest``
    the app's newest stored snapshot (what the app restarts from when the move fails).
    """
    status, reason = row.status, row.reason
    to_node, snapshot, repl = row.to_node, row.snapshot, row.replacement
    mine = source is not None and source.migration_id == row.id
    if mine and source is not None and source.snapshot and source.checkpoint:
        snapshot = source.snapshot
    if replacement is not None:
        to_node, repl = replacement.node, replacement.key
        snapshot = replacement.restore_from or snapshot
        if replacement.state is State.FAILED:
            return Progress(
                "failed",
                to_node,
                snapshot,
                repl,
                f"the replacement on {replacement.node} failed: {replacement.message}",
            )
        source_out = source is None or source.command in (Command.DEACTIVATE, Command.UNLOAD)
        if replacement.state is State.ACTIVE and source_out:
            return Progress("done", to_node, snapshot, repl, f"ACTIVE on {replacement.node}")
        if replacement.restore_from:
            status = "restoring"
            reason = f"restoring {replacement.restore_from[:19]} on {replacement.node}"
        else:
            reason = f"starting on {replacement.node}"
    elif (
        row.kind == "stateless"
        and app_whole
        and (source is None or (mine and source.command in (Command.DEACTIVATE, Command.UNLOAD)))
    ):
        # retiring because a replacement serves: one placed before this migration was
        # recorded (a drain raced the mark), so it does not carry the migration's id
        return Progress("done", to_node, snapshot, repl, "replaced; the app serves elsewhere")
    elif source is None and row.replacement:
        # the replacement was placed, then vanished: its node was lost (during the restore)
        target = row.to_node or "the target node"
        reason = (
            f"the replacement {row.replacement} on {target} went away before it served "
            f"(node {target} was lost"
            + (" during the restore" if row.status == "restoring" else "")
            + f"); the source {row.from_node} had stopped as asked"
            + _fallback(row, latest)
        )
        return Progress("failed", to_node, snapshot, repl, reason)
    elif source is None:
        status = "failed"
        reason = (
            f"instance {row.instance} went away before a replacement was placed for this "
            f"migration (node {row.from_node} was lost, or the scheduler replaced it first)"
            + (_fallback(row, latest) if row.kind == "stateful" else "")
        )
        return Progress(status, to_node, snapshot, repl, reason)
    elif mine:
        if source.state is State.FAILED:
            reason = f"{row.instance} failed on {source.node}: {source.message}"
            if row.kind == "stateful" and source.checkpoint:
                reason = (
                    f"the checkpoint on {source.node} failed ({source.message}): the state "
                    "since the app's last stored checkpoint did not move" + _fallback(row, latest)
                )
            return Progress("failed", to_node, snapshot, repl, reason)
        if source.checkpoint and source.command is Command.DEACTIVATE:
            status = "checkpointing"
            reason = (
                f"checkpointed as {source.snapshot[:19]}; placing the replacement"
                if source.snapshot
                else f"checkpointing on {source.node}"
            )
    if waiting is not None and status not in MIGRATION_FINAL:
        reason = f"waiting: {waiting}"
    if expired:
        return Progress("failed", to_node, snapshot, repl, f"did not finish in time ({reason})")
    return Progress(status, to_node, snapshot, repl, reason)


def _fallback(row: MigrationRecord, latest: str | None) -> str:
    """What a stateful app restarts from once its move failed."""
    if row.kind != "stateful":
        return "; the scheduler keeps the app's instance count"
    if latest is None:
        return "; no snapshot of the app is stored: its replacement starts empty"
    return f"; its replacement restores the app's newest stored snapshot {latest}"


_EVENTS = {
    "checkpointing": "migration_checkpointing",
    "restoring": "migration_restoring",
    "done": "migrated",
    "failed": "migration_failed",
}


async def track(ctx: ServerContext, actions: Sequence[Action]) -> None:
    """Bring every open migration's row up to date with the cluster.

    The leader runs it after each pass with the actions it applied (an
    Unplaceable says why a replacement waits), on a fresh read of the store.
    """
    rows = await ctx.records.open_migrations()
    if not rows:
        return
    snap = await read_snapshot(ctx.store)
    waiting = {a.app: a.reason for a in actions if isinstance(a, Unplaceable)}
    replacements: dict[str, InstanceRecord] = {}
    for record, _ in snap.instances.values():
        if record.migration_id and record.migrate_to is None:
            replacements[record.migration_id] = record
    whole = {
        bp.app
        for bp, _ in snap.blueprints.values()
        if sum(
            1
            for inst, _ in snap.instances.values()
            if inst.app == bp.app
            and inst.version == bp.version
            and inst.command is Command.ACTIVATE
            and inst.state is State.ACTIVE
        )
        >= bp.instances
    }
    latest = await latest_snapshots(ctx, snap)
    now = time.time()
    for row in rows:
        entry = snap.instances.get(row.instance)
        source = entry[0] if entry else None
        started = epoch(row.started_at)
        new = progress(
            row,
            source,
            replacements.get(row.id),
            waiting=waiting.get(row.app),
            expired=now - started > ctx.settings.migration_timeout,
            app_whole=row.app in whole,
            latest=latest.get(row.app),
        )
        changed = {
            field: getattr(new, field)
            for field in ("status", "to_node", "snapshot", "replacement", "reason")
            if getattr(new, field) != getattr(row, field)
        }
        if not changed:
            continue
        await ctx.records.update_migration(row.id, **changed)
        if "status" in changed and new.status in _EVENTS:
            deployment = _deployment_of(snap, source, replacements.get(row.id), row.app)
            if deployment:
                await ctx.records.add_event(
                    deployment,
                    _EVENTS[new.status],
                    f"migration {row.id} of {row.instance}: {new.reason}",
                )
            log.info("migration %s: %s (%s)", row.id, new.status, new.reason)


def _deployment_of(
    snap: ClusterSnapshot,
    source: InstanceRecord | None,
    replacement: InstanceRecord | None,
    app: str,
) -> str | None:
    for record in (replacement, source):
        if record is not None:
            return record.deployment_id
    entry = snap.blueprints.get(app)
    return entry[0].deployment_id if entry else None


# -- snapshots -------------------------------------------------------------------------


async def latest_snapshots(ctx: ServerContext, snap: ClusterSnapshot) -> dict[str, str]:
    """App → the digest of its newest snapshot, for the stateful apps of ``snap``."""
    stateful = [(bp.tenant, bp.app) for bp, _ in snap.blueprints.values() if bp.spec.stateful]
    if not stateful:
        return {}
    found = await ctx.records.latest_snapshots(stateful)
    return {app: digest for (_, app), digest in found.items()}


def _protected(snap: ClusterSnapshot) -> set[str]:
    """Digests an instance still names: what it restores, or the checkpoint it made."""
    out: set[str] = set()
    for record, _ in snap.instances.values():
        for digest in (record.restore_from, record.snapshot):
            if digest:
                out.add(digest)
    return out


async def snapshot_digests(ctx: ServerContext) -> set[str]:
    """Every digest a snapshot row names."""
    return {row.digest for row in await ctx.records.list_snapshots(None, limit=1_000_000)}


async def apply_retention(ctx: ServerContext, *, dry_run: bool = False) -> tuple[int, int]:
    """Delete the snapshots retention no longer keeps: (rows deleted, blobs deleted)."""
    rows = await ctx.records.list_snapshots(None, limit=1_000_000)
    if not rows:
        return 0, 0
    snap = await read_snapshot(ctx.store)
    now = time.time()
    plan = plan_retention(
        [
            SnapshotRow(r.id, r.tenant_id, r.app, r.digest, epoch(r.created_at), r.status)
            for r in rows
        ],
        now=now,
        keep_per_app=ctx.settings.snapshot_keep,
        protected=_protected(snap),
    )
    if dry_run:
        return len(plan.delete), len(plan.delete_blobs)
    await ctx.records.delete_snapshots(list(plan.delete))
    deleted_blobs = 0
    for digest in plan.delete_blobs:
        # a blob that is also an artifact (the same bytes uploaded as one) stays
        if await ctx.records.has_snapshot(None, digest) or await ctx.records.artifact_claimed(
            digest
        ):
            continue
        await ctx.registry.delete(digest)
        deleted_blobs += 1
    await ctx.records.set_snapshot_tiers({k: v for k, v in plan.keep.items() if v != "expired"})
    if plan.delete:
        log.info("snapshots: %d deleted, %d blob(s) removed", len(plan.delete), deleted_blobs)
    return len(plan.delete), deleted_blobs

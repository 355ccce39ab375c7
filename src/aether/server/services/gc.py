"""Garbage collection of artifacts and per-file blobs (the leader runs it every
``gc_interval``: :mod:`aether.server.leader.gc`; ``POST /api/v1/gc`` runs it now).

Besides what retention drops, each pass deletes incremental-upload blobs idle past
``gc_grace_seconds`` (on disk by mtime, on S3 by LastModified: ``missing()`` renews
the ones deploys reuse) and clears uploads a crashed server left half done: S3
multipart uploads of artifacts and blobs, and local temp files, once they are
``max(gc_grace_seconds, 1 h)`` old (a live upload is never that old). It also
trims the task queue's event log to the ``events_resume_limit`` newest
positions, all an event stream may resume across, and the audit trail to
``audit_retention_days`` (keeping its hash chain verifiable: see
:mod:`aether.store.records.audit`), and agents' policy enforcements to
``policy_enforcements_retention_days``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aether.artifacts.s3 import S3ArtifactRegistry
from aether.core.retention import ArtifactRow, DeploymentRow, plan_gc
from aether.server.context import ServerContext
from aether.server.services.cluster import read_snapshot
from aether.server.services.migrations import apply_retention, snapshot_digests
from aether.server.services.runs import expire_runs

__all__ = ["GcResult", "collect_garbage"]

log = logging.getLogger("aether.gc")


@dataclass(frozen=True)
class GcResult:
    deleted_artifacts: list[str]
    deleted_claims: int
    deleted_blobs: int
    kept_artifacts: int
    dry_run: bool
    deleted_snapshots: int = 0  # snapshot rows retention dropped (hot/warm/cold tiers)
    aborted_uploads: int = 0  # orphaned multipart uploads (S3) or temp files cleared
    trimmed_task_events: int = 0  # task state changes older than any resume needs
    trimmed_audit_events: int = 0  # audit events older than audit_retention_days
    trimmed_policy_enforcements: int = 0  # older than policy_enforcements_retention_days
    expired_runs: int = 0  # agents' runs no node started, or no one approved, in time


#: Uploads younger than this are never treated as orphaned, whatever the grace period.
MIN_UPLOAD_AGE = 3600.0


async def collect_garbage(
    ctx: ServerContext, *, dry_run: bool = False, now: float | None = None
) -> GcResult:
    """Delete what retention no longer keeps; never what runs or can be rolled back to.

    ``now`` (epoch seconds; default the clock) lets tests age things without waiting.
    """
    settings = ctx.settings
    now = time.time() if now is None else now
    deleted_snapshots, _ = await apply_retention(ctx, dry_run=dry_run)
    artifacts, deployments, retain = await ctx.records.retention_inputs()
    snap = await read_snapshot(ctx.store)
    in_use = {inst.digest for inst, _ in snap.instances.values()}
    in_use |= await snapshot_digests(ctx)  # a blob both an artifact and a snapshot stays
    for bp, _ in snap.blueprints.values():
        in_use.add(bp.digest)
        if bp.previous is not None:
            in_use.add(bp.previous.digest)
    plan = plan_gc(
        [ArtifactRow(a.tenant_id, a.digest, a.created_at.timestamp()) for a in artifacts],
        [DeploymentRow(*row) for row in deployments],
        retain=retain,
        default_retain=settings.retain_deployments,
        in_use=in_use,
        now=now,
        grace=settings.gc_grace_seconds,
    )
    if not dry_run:
        for tenant_id, digest in plan.delete_rows:
            await ctx.records.delete_artifact_claim(tenant_id, digest)
        for digest in plan.delete_blobs:
            await ctx.registry.delete(digest)
    # per-file blobs are only an upload cache: anything idle past the grace period goes
    # (a deploy that loses one mid-way uploads it again: see aether.artifacts.sync)
    moment = datetime.fromtimestamp(now, UTC)
    stale_blobs = await ctx.blobs.delete_stale(
        moment - timedelta(seconds=settings.gc_grace_seconds), dry_run=dry_run
    )
    upload_age = timedelta(seconds=max(settings.gc_grace_seconds, MIN_UPLOAD_AGE))
    aborted = await ctx.blobs.abort_stale_uploads(moment, upload_age, dry_run=dry_run)
    if isinstance(ctx.registry, S3ArtifactRegistry):
        aborted += await ctx.registry.abort_stale_uploads(moment, upload_age, dry_run=dry_run)
    trimmed = 0 if dry_run else await ctx.queue.trim_events(settings.events_resume_limit)
    audit_cutoff = now - settings.audit_retention_days * 86400
    # the last trimmed event's hash becomes the chain's anchor: it stays verifiable
    trimmed_audit = 0 if dry_run else await ctx.records.trim_audit_before(audit_cutoff)
    decisions_cutoff = now - settings.policy_enforcements_retention_days * 86400
    trimmed_decisions = (
        0 if dry_run else await ctx.records.trim_enforcements_before(decisions_cutoff)
    )
    expired_runs = 0 if dry_run else await expire_runs(ctx, now)
    if not dry_run:
        if plan.delete_blobs:
            ctx.metrics.artifacts_changed()
        if plan.delete_rows or stale_blobs or aborted:
            log.info(
                "gc: %d artifact claim(s), %d artifact(s), %d file blob(s) deleted; "
                "%d orphaned upload(s) aborted",
                len(plan.delete_rows),
                len(plan.delete_blobs),
                stale_blobs,
                aborted,
            )
    return GcResult(
        deleted_artifacts=list(plan.delete_blobs),
        deleted_claims=len(plan.delete_rows),
        deleted_blobs=stale_blobs,
        kept_artifacts=plan.kept,
        dry_run=dry_run,
        deleted_snapshots=deleted_snapshots,
        aborted_uploads=aborted,
        trimmed_task_events=trimmed,
        trimmed_audit_events=trimmed_audit,
        trimmed_policy_enforcements=trimmed_decisions,
        expired_runs=expired_runs,
    )

"""Garbage collection of artifacts and per-file blobs (the leader runs it)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from aether.core.retention import ArtifactRow, DeploymentRow, plan_gc
from aether.server.cluster import read_snapshot
from aether.server.context import ServerContext
from aether.server.migrations import apply_retention, snapshot_digests

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


def _old_files(root: Path, older_than: float) -> list[Path]:
    if not root.exists():
        return []
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and "tmp" not in p.parts and p.stat().st_mtime < older_than
    ]


async def collect_garbage(ctx: ServerContext, *, dry_run: bool = False) -> GcResult:
    """Delete what retention no longer keeps; never what runs or can be rolled back to."""
    settings = ctx.settings
    now = time.time()
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
    blobs_root = settings.data_dir.resolve() / "blobs"
    stale_blobs = await asyncio.to_thread(_old_files, blobs_root, now - settings.gc_grace_seconds)
    if not dry_run:
        for tenant_id, digest in plan.delete_rows:
            await ctx.records.delete_artifact_claim(tenant_id, digest)
        for digest in plan.delete_blobs:
            await ctx.registry.delete(digest)
        # per-file blobs are only an upload cache: anything idle past the grace period goes
        for path in stale_blobs:
            os.unlink(path)
        if plan.delete_rows or stale_blobs:
            log.info(
                "gc: %d artifact claim(s), %d artifact(s), %d file blob(s) deleted",
                len(plan.delete_rows),
                len(plan.delete_blobs),
                len(stale_blobs),
            )
    return GcResult(
        deleted_artifacts=list(plan.delete_blobs),
        deleted_claims=len(plan.delete_rows),
        deleted_blobs=len(stale_blobs),
        kept_artifacts=plan.kept,
        dry_run=dry_run,
        deleted_snapshots=deleted_snapshots,
    )

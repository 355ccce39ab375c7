"""Tenants: what each holds, and deleting one with everything it owns.

A forced delete stops the tenant's apps the way ``DELETE /apps/{app}`` does (the
blueprint and endpoints go; the leader retires the instances), cancels its tasks,
asks each node holding one of its sandboxes to delete it (a ``vm:delete`` task of
the ``default`` tenant, which survives the tenant), removes its records in one
transaction, forgets its tokens and console sessions (here at once, on the other
servers within a second: ``services/revocations.py``), and deletes the blobs no one
else claims. A server deletes one tenant at a time once (``delete_tenant``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aether.errors import ConflictError
from aether.model.blueprints import blueprint_file_key
from aether.model.names import split_cluster_name
from aether.model.tasks import TaskState
from aether.server.context import ServerContext
from aether.server.services.cluster import ClusterSnapshot, read_snapshot, remove_app
from aether.server.services.revocations import forget_tokens
from aether.store.records import DEFAULT_TENANT
from aether.store.records.schema import Tenant
from aether.tasks.queue.base import NewTask
from aether.tasks.types import lookup

__all__ = ["TenantUsage", "delete_tenant", "tenant_usage"]

_UNFINISHED = (TaskState.PENDING, TaskState.SCHEDULED, TaskState.ACTIVE, TaskState.RETRY)


@dataclass(frozen=True, slots=True)
class TenantUsage:
    apps: int = 0
    desired_apps: tuple[str, ...] = ()  # apps with desired instances
    instances: int = 0
    tasks: int = 0
    sandboxes: int = 0

    def running(self) -> str:
        """What runs, in words; empty when nothing does."""
        parts = []
        if self.desired_apps:
            parts.append(f"{len(self.desired_apps)} app(s) ({', '.join(self.desired_apps)})")
        if self.tasks:
            parts.append(f"{self.tasks} unfinished task(s)")
        if self.sandboxes:
            parts.append(f"{self.sandboxes} sandbox(es)")
        return ", ".join(parts)


async def tenant_usage(
    ctx: ServerContext, tenants: list[Tenant], snap: ClusterSnapshot | None = None
) -> dict[str, TenantUsage]:
    """What each tenant holds, by tenant id."""
    snap = snap or await read_snapshot(ctx.store)
    apps = await ctx.records.live_app_counts()
    sandboxes = await ctx.records.live_sandbox_counts()
    out = {}
    for tenant in tenants:
        stats = await ctx.queue.stats(tenant.id)
        out[tenant.id] = TenantUsage(
            apps=apps.get(tenant.id, 0),
            desired_apps=tuple(
                sorted(
                    split_cluster_name(bp.app)[0]  # the tenant's own name for it
                    for bp, _ in snap.blueprints.values()
                    if bp.tenant == tenant.id and bp.instances > 0
                )
            ),
            instances=sum(1 for i, _ in snap.instances.values() if i.tenant == tenant.id),
            tasks=sum(stats.get(state, 0) for state in _UNFINISHED),
            sandboxes=sandboxes.get(tenant.id, 0),
        )
    return out


@dataclass(frozen=True, slots=True)
class DeletedTenant:
    apps: int
    instances: int
    tasks: int
    sandboxes: int
    tokens: int
    artifacts: int


async def delete_tenant(ctx: ServerContext, tenant: Tenant, *, force: bool) -> DeletedTenant:
    """Delete the tenant; refused (409, naming what runs) while it runs something
    unless ``force``. The ``default`` tenant is never deleted.

    While it runs, the tenant is in ``ctx.tenants_deleting``: a second delete of it is
    a 409, and so is anything new in it (``enforce_quota``, which every deploy, scale,
    rollback, task and upload passes). Apps written by a request already past that
    check are removed by a second sweep after the purge.
    """
    if tenant.name == DEFAULT_TENANT:
        raise ConflictError("the default tenant holds the cluster admins and cannot be deleted")
    if tenant.id in ctx.tenants_deleting:
        raise ConflictError(f"tenant {tenant.name!r} is being deleted already")
    ctx.tenants_deleting.add(tenant.id)  # no await since the check: held by this call
    try:
        return await _delete(ctx, tenant, force=force)
    finally:
        ctx.tenants_deleting.discard(tenant.id)


async def _delete(ctx: ServerContext, tenant: Tenant, *, force: bool) -> DeletedTenant:
    usage = (await tenant_usage(ctx, [tenant]))[tenant.id]
    running = usage.running()
    if running and not force:
        raise ConflictError(
            f"tenant {tenant.name!r} runs {running}; stop them first, "
            "or delete anyway with --force (?force=true)"
        )
    apps = await _remove_apps(ctx, tenant)
    tasks = await _cancel_tasks(ctx, tenant)
    sandboxes = await _delete_sandboxes(ctx, tenant)
    purged = await ctx.records.purge_tenant(tenant.id)
    await forget_tokens(ctx, purged.token_ids)  # here at once, on other servers within 1 s
    apps += await _remove_apps(ctx, tenant)  # written by a request in flight meanwhile
    artifacts = await _delete_blobs(ctx, purged.digests)
    return DeletedTenant(
        apps=apps,
        instances=usage.instances,
        tasks=tasks,
        sandboxes=sandboxes,
        tokens=len(purged.token_ids),
        artifacts=artifacts,
    )


async def _remove_apps(ctx: ServerContext, tenant: Tenant) -> int:
    """Remove every blueprint of the tenant (the leader retires the instances), and
    the blueprint files it applied."""
    await ctx.store.delete(blueprint_file_key(tenant.id, ""), prefix=True)
    snap = await read_snapshot(ctx.store)
    removed = 0
    for bp, _ in snap.blueprints.values():
        if bp.tenant == tenant.id:
            await remove_app(ctx.store, bp.app, tenant=tenant.id, force=True)
            removed += 1
    return removed


async def _cancel_tasks(ctx: ServerContext, tenant: Tenant) -> int:
    cancelled = 0
    for state in _UNFINISHED:
        while tasks := await ctx.queue.list(tenant.id, state=state, limit=100):
            for task in tasks:
                await ctx.queue.cancel(task.id, tenant.id)
                cancelled += 1
    return cancelled


async def _delete_sandboxes(ctx: ServerContext, tenant: Tenant) -> int:
    """Ask the node of each live sandbox to delete it, as the cluster (default tenant)."""
    vm_delete = lookup("vm:delete")
    assert vm_delete is not None
    cluster = await ctx.records.ensure_tenant(DEFAULT_TENANT)
    count = 0
    for sandbox in await ctx.records.list_sandboxes(tenant.id):
        if sandbox.status in ("deleted", "failed"):
            continue
        count += 1
        if sandbox.node is None:  # never placed: nothing on a node to delete
            continue
        await ctx.queue.submit(
            cluster.id,
            NewTask(
                type=vm_delete.name,
                payload=vm_delete.payload.model_validate({"vm_id": sandbox.id}).model_dump(
                    mode="json"
                ),
                queue=vm_delete.queue,
                priority=vm_delete.priority,
                max_retry=vm_delete.max_retry,
                timeout=vm_delete.timeout,
                run_at=time.time(),
                node=sandbox.node,
            ),
        )
    return count


async def _delete_blobs(ctx: ServerContext, digests: set[str]) -> int:
    """Delete the blobs of ``digests`` no other tenant claims and no snapshot names."""
    gone = digests - await ctx.records.claimed_digests(digests)
    for digest in sorted(gone):
        await ctx.registry.delete(digest)
    if gone:
        ctx.metrics.artifacts_changed()
    return len(gone)

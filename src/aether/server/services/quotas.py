"""A tenant's quotas: its limits, what it uses now, and the check routes make.

The use is read where it lives: desired instances and the CPU and memory they
reserve from the blueprints in the state store, tasks from the queue, sandboxes
and artifact bytes from the records. The decision is ``core/quotas.py``'s.
"""

from __future__ import annotations

from collections.abc import Mapping

from aether.core.quotas import check, effective
from aether.errors import ConflictError, QuotaExceededError
from aether.model.cluster import Blueprint
from aether.model.limits import TenantLimits, Usage
from aether.model.tasks import TaskState
from aether.server.context import ServerContext

__all__ = [
    "app_reservation",
    "cluster_defaults",
    "configured_limits",
    "enforce_quota",
    "tenant_limits",
    "tenant_usage",
]

#: Task states that count against the ``tasks`` quota: queued or running.
_OPEN_TASKS = (TaskState.PENDING, TaskState.SCHEDULED, TaskState.ACTIVE, TaskState.RETRY)


def cluster_defaults(ctx: ServerContext) -> TenantLimits:
    s = ctx.settings
    return TenantLimits(
        rate_per_minute=s.rate_limit_per_minute,
        burst=min(s.rate_limit_burst, s.rate_limit_per_minute),
        instances=s.quota_instances,
        cpu=s.quota_cpu,
        memory_mb=s.quota_memory_mb,
        tasks=s.quota_tasks,
        sandboxes=s.quota_sandboxes,
        artifact_bytes=s.quota_artifact_bytes,
    )


async def configured_limits(ctx: ServerContext, tenant_id: str) -> TenantLimits:
    """The tenant's own values (None: the cluster default)."""
    return TenantLimits.model_validate(await ctx.records.tenant_limits(tenant_id))


async def tenant_limits(ctx: ServerContext, tenant_id: str) -> TenantLimits:
    """What applies to the tenant: its own values, else the cluster defaults."""
    return effective(await configured_limits(ctx, tenant_id), cluster_defaults(ctx))


def app_reservation(instances: int, cpu: float, memory_mb: int) -> dict[str, float]:
    """What ``instances`` instances of an app reserve, per quota."""
    return {
        "instances": instances,
        "cpu": instances * cpu,
        "memory_mb": instances * memory_mb,
    }


async def _blueprints(ctx: ServerContext, tenant_id: str) -> list[Blueprint]:
    found, _ = await ctx.store.range("blueprints/")
    blueprints = (Blueprint.model_validate_json(kv.value) for kv in found)
    return [bp for bp in blueprints if bp.tenant == tenant_id]


async def tenant_usage(ctx: ServerContext, tenant_id: str) -> Usage:
    usage = Usage()
    for bp in await _blueprints(ctx, tenant_id):
        reserved = app_reservation(bp.instances, bp.spec.resources.cpu, bp.spec.resources.memory_mb)
        usage.instances += bp.instances
        usage.cpu += reserved["cpu"]
        usage.memory_mb += int(reserved["memory_mb"])
    stats = await ctx.queue.stats(tenant_id)
    usage.tasks = sum(stats.get(state, 0) for state in _OPEN_TASKS)
    sandboxes = await ctx.records.list_sandboxes(tenant_id)
    usage.sandboxes = sum(1 for s in sandboxes if s.status in ("creating", "running"))
    usage.artifact_bytes = await ctx.records.artifact_bytes(tenant_id)
    usage.cpu = round(usage.cpu, 6)
    return usage


async def enforce_quota(ctx: ServerContext, tenant_id: str, requested: Mapping[str, float]) -> None:
    """Refuse (403 ``quota_exceeded``) a request that would take a quota past its limit,
    and (409) anything new in a tenant being deleted."""
    if tenant_id in ctx.tenants_deleting:
        raise ConflictError("this tenant is being deleted; nothing new may be created in it")
    if not any(amount > 0 for amount in requested.values()):
        return
    limits = await tenant_limits(ctx, tenant_id)
    asked = {
        quota: amount for quota, amount in requested.items() if getattr(limits, quota) is not None
    }
    if not asked:
        return  # unlimited: no use to read
    refusal = check(limits, await tenant_usage(ctx, tenant_id), asked)
    if refusal is not None:
        raise QuotaExceededError(refusal.message, details=refusal.details())

"""Tenants' own rate limits and quotas (``tenant_limits``), and the artifact bytes they
store (the one quota whose use is only in the records)."""

from __future__ import annotations

from sqlalchemy import func, select

from aether.store.records.base import RecordsBase, now
from aether.store.records.schema import Artifact, Tenant, TenantLimitsRow

__all__ = ["LIMIT_COLUMNS", "LimitRecords"]

#: The columns of ``tenant_limits`` a caller sets (the rest is the key and the time).
LIMIT_COLUMNS = (
    "rate_per_minute",
    "burst",
    "instances",
    "cpu",
    "memory_mb",
    "tasks",
    "sandboxes",
    "artifact_bytes",
)


class LimitRecords(RecordsBase):
    async def tenant_id_of(self, name: str) -> str | None:
        """The id of the tenant called ``name``, or None."""
        async with self.sessions() as session:
            found: str | None = await session.scalar(select(Tenant.id).where(Tenant.name == name))
            return found

    async def tenant_limits(self, tenant_id: str) -> dict[str, float | None]:
        """The tenant's own values (None where it has none: the cluster default)."""
        async with self.sessions() as session:
            row = await session.get(TenantLimitsRow, tenant_id)
        return {column: getattr(row, column) if row else None for column in LIMIT_COLUMNS}

    async def set_tenant_limits(self, tenant_id: str, values: dict[str, float | None]) -> None:
        """Replace the tenant's own values (None: back to the cluster default)."""
        async with self.sessions() as session:
            row = await session.get(TenantLimitsRow, tenant_id)
            if row is None:
                row = TenantLimitsRow(tenant_id=tenant_id, updated_at=now())
                session.add(row)
            for column in LIMIT_COLUMNS:
                setattr(row, column, values.get(column))
            row.updated_at = now()
            await session.commit()

    async def artifact_bytes(self, tenant_id: str) -> int:
        """Bytes of the artifacts the tenant has stored (its records, not shared blobs)."""
        async with self.sessions() as session:
            total = await session.scalar(
                select(func.coalesce(func.sum(Artifact.size_bytes), 0)).where(
                    Artifact.tenant_id == tenant_id
                )
            )
        return int(total or 0)

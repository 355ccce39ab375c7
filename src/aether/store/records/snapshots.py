"""Snapshots and instance migrations (aether.server.services.migrations)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select, update

from aether.errors import NotFoundError
from aether.store.records.base import (
    RecordsBase,
    new_id,
    now,
)
from aether.store.records.schema import (
    Artifact,
    MigrationRecord,
    SnapshotRecord,
)

__all__ = ["SnapshotRecords"]


class SnapshotRecords(RecordsBase):
    async def add_snapshot(
        self,
        *,
        tenant_id: str,
        app: str,
        instance: str,
        node: str,
        digest: str,
        size_bytes: int,
        kind: str,
    ) -> SnapshotRecord:
        row = SnapshotRecord(
            id=new_id(),
            tenant_id=tenant_id,
            app=app,
            instance=instance[:255],
            node=node[:128],
            digest=digest,
            size_bytes=size_bytes,
            kind=kind,
            tier="hot",
            created_at=now(),
        )
        async with self.sessions() as session:
            session.add(row)
            await session.commit()
        return row

    async def list_snapshots(
        self, tenant_id: str | None, app: str | None = None, limit: int = 100
    ) -> Sequence[SnapshotRecord]:
        """Newest first; ``tenant_id`` None: every tenant's (retention)."""
        query = select(SnapshotRecord)
        if tenant_id is not None:
            query = query.where(SnapshotRecord.tenant_id == tenant_id)
        if app is not None:
            query = query.where(SnapshotRecord.app == app)
        query = query.order_by(SnapshotRecord.created_at.desc(), SnapshotRecord.id.desc())
        async with self.sessions() as session:
            return (await session.scalars(query.limit(limit))).all()

    async def has_snapshot(self, tenant_id: str | None, digest: str) -> bool:
        query = select(SnapshotRecord.id).where(SnapshotRecord.digest == digest)
        if tenant_id is not None:
            query = query.where(SnapshotRecord.tenant_id == tenant_id)
        async with self.sessions() as session:
            return await session.scalar(query.limit(1)) is not None

    async def snapshot_taken_on(self, node: str, digest: str) -> bool:
        """Whether a snapshot with this digest was stored from an instance on ``node``."""
        query = select(SnapshotRecord.id).where(
            SnapshotRecord.digest == digest, SnapshotRecord.node == node
        )
        async with self.sessions() as session:
            return await session.scalar(query.limit(1)) is not None

    async def latest_snapshots(self, apps: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The digest of the newest snapshot of each (tenant id, app) that has one."""
        out: dict[tuple[str, str], str] = {}
        async with self.sessions() as session:
            for tenant_id, app in apps:
                digest = await session.scalar(
                    select(SnapshotRecord.digest)
                    .where(SnapshotRecord.tenant_id == tenant_id, SnapshotRecord.app == app)
                    .order_by(SnapshotRecord.created_at.desc(), SnapshotRecord.id.desc())
                    .limit(1)
                )
                if digest is not None:
                    out[(tenant_id, app)] = digest
        return out

    async def artifact_claimed(self, digest: str) -> bool:
        """Whether any tenant holds an artifact with this digest."""
        async with self.sessions() as session:
            found = await session.scalar(
                select(Artifact.id).where(Artifact.digest == digest).limit(1)
            )
            return found is not None

    async def delete_snapshots(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        async with self.sessions() as session:
            await session.execute(delete(SnapshotRecord).where(SnapshotRecord.id.in_(ids)))
            await session.commit()

    async def set_snapshot_tiers(self, tiers: dict[str, str]) -> None:
        """Record each snapshot's tier (row id → tier) where it changed."""
        async with self.sessions() as session:
            for tier in sorted(set(tiers.values())):
                ids = [i for i, t in tiers.items() if t == tier]
                await session.execute(
                    update(SnapshotRecord)
                    .where(SnapshotRecord.id.in_(ids), SnapshotRecord.tier != tier)
                    .values(tier=tier)
                )
            await session.commit()

    async def create_migration(
        self,
        *,
        tenant_id: str,
        app: str,
        instance: str,
        from_node: str,
        to_node: str | None,
        kind: str,
        reason: str,
        migration_id: str | None = None,
    ) -> MigrationRecord:
        row = MigrationRecord(
            id=migration_id or new_id(),
            tenant_id=tenant_id,
            app=app,
            instance=instance[:255],
            from_node=from_node,
            to_node=to_node,
            kind=kind,
            status="requested",
            snapshot=None,
            replacement=None,
            reason=reason,
            started_at=now(),
            finished_at=None,
        )
        async with self.sessions() as session:
            session.add(row)
            await session.commit()
        return row

    async def get_migration(self, tenant_id: str | None, migration_id: str) -> MigrationRecord:
        async with self.sessions() as session:
            row = await session.get(MigrationRecord, migration_id)
        if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
            raise NotFoundError(f"migration {migration_id!r} not found")
        return row

    async def list_migrations(
        self, tenant_id: str, app: str | None = None, limit: int = 100
    ) -> Sequence[MigrationRecord]:
        """Newest first."""
        query = select(MigrationRecord).where(MigrationRecord.tenant_id == tenant_id)
        if app is not None:
            query = query.where(MigrationRecord.app == app)
        query = query.order_by(MigrationRecord.started_at.desc(), MigrationRecord.id.desc())
        async with self.sessions() as session:
            return (await session.scalars(query.limit(limit))).all()

    async def open_migrations(self) -> Sequence[MigrationRecord]:
        """Every migration that has not finished, oldest first."""
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(MigrationRecord)
                    .where(MigrationRecord.status.not_in(("done", "failed")))
                    .order_by(MigrationRecord.started_at, MigrationRecord.id)
                )
            ).all()

    async def update_migration(self, migration_id: str, **values: Any) -> None:
        """Change a migration's fields; ``finished_at`` is set when it reaches done or failed."""
        if values.get("status") in ("done", "failed"):
            values.setdefault("finished_at", now())
        async with self.sessions() as session:
            await session.execute(
                update(MigrationRecord).where(MigrationRecord.id == migration_id).values(**values)
            )
            await session.commit()

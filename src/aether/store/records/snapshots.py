"""Snapshots and instance migrations (aether.server.services.migrations)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
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
        status: str = "stored",
        taken_at: datetime | None = None,
    ) -> SnapshotRecord:
        stamp = now()
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
            created_at=stamp,
            status=status,
            taken_at=min(taken_at, stamp) if taken_at is not None else stamp,
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

    async def checkpointed_on(self, instance: str, node: str) -> bool:
        """Whether a checkpoint of ``instance`` was stored from ``node`` (an orphan's proof
        that the instance ran there)."""
        query = select(SnapshotRecord.id).where(
            SnapshotRecord.instance == instance,
            SnapshotRecord.node == node,
            SnapshotRecord.status != "orphaned",
        )
        async with self.sessions() as session:
            return await session.scalar(query.limit(1)) is not None

    async def latest_snapshots(self, apps: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The digest of the newest snapshot of each (tenant id, app) that has one.

        An ``orphaned`` snapshot is never it: an operator brings one back on purpose.
        """
        out: dict[tuple[str, str], str] = {}
        async with self.sessions() as session:
            for tenant_id, app in apps:
                digest = await session.scalar(
                    select(SnapshotRecord.digest)
                    .where(
                        SnapshotRecord.tenant_id == tenant_id,
                        SnapshotRecord.app == app,
                        SnapshotRecord.status != "orphaned",
                    )
                    .order_by(SnapshotRecord.created_at.desc(), SnapshotRecord.id.desc())
                    .limit(1)
                )
                if digest is not None:
                    out[(tenant_id, app)] = digest
        return out

    async def newest_checkpoints(
        self, apps: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], datetime]:
        """When the newest checkpoint (not an orphan) of each (tenant id, app) was taken."""
        out: dict[tuple[str, str], datetime] = {}
        async with self.sessions() as session:
            for tenant_id, app in apps:
                rows = await session.execute(
                    select(SnapshotRecord.created_at, SnapshotRecord.taken_at)
                    .where(
                        SnapshotRecord.tenant_id == tenant_id,
                        SnapshotRecord.app == app,
                        SnapshotRecord.status != "orphaned",
                    )
                    .order_by(SnapshotRecord.created_at.desc())
                    .limit(1)
                )
                for created, taken in rows:
                    out[(tenant_id, app)] = taken or created
        return out

    async def confirm_snapshot(self, instance: str, digest: str) -> SnapshotRecord | None:
        """The instance's state is still ``digest``: its newest row of it is taken now."""
        async with self.sessions() as session:
            row = await session.scalar(
                select(SnapshotRecord)
                .where(SnapshotRecord.instance == instance, SnapshotRecord.digest == digest)
                .order_by(SnapshotRecord.created_at.desc(), SnapshotRecord.id.desc())
                .limit(1)
            )
            if row is None:
                return None
            row.taken_at = now()
            await session.commit()
            await session.refresh(row)
            return row

    async def find_snapshot(
        self, tenant_id: str, app: str, digest: str
    ) -> Sequence[SnapshotRecord]:
        """The tenant's rows of ``app`` with this digest, newest first."""
        query = (
            select(SnapshotRecord)
            .where(
                SnapshotRecord.tenant_id == tenant_id,
                SnapshotRecord.app == app,
                SnapshotRecord.digest == digest,
            )
            .order_by(SnapshotRecord.created_at.desc(), SnapshotRecord.id.desc())
        )
        async with self.sessions() as session:
            return (await session.scalars(query)).all()

    async def set_snapshot_status(self, ids: Sequence[str], status: str) -> None:
        if not ids:
            return
        async with self.sessions() as session:
            await session.execute(
                update(SnapshotRecord).where(SnapshotRecord.id.in_(ids)).values(status=status)
            )
            await session.commit()

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

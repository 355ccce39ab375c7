"""Artifacts: uploaded, shared, looked up by digest."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from aether.errors import NotFoundError
from aether.store.records.base import (
    RecordsBase,
    new_id,
    now,
)
from aether.store.records.schema import (
    Artifact,
)

__all__ = ["ArtifactRecords"]


class ArtifactRecords(RecordsBase):
    async def has_artifact(self, tenant_id: str, digest: str) -> bool:
        async with self.sessions() as session:
            found = await session.scalar(
                select(Artifact.id).where(
                    Artifact.tenant_id == tenant_id, Artifact.digest == digest
                )
            )
            return found is not None

    async def add_artifact(self, tenant_id: str, digest: str, size_bytes: int) -> None:
        if await self.has_artifact(tenant_id, digest):
            return
        async with self.sessions() as session:
            session.add(
                Artifact(
                    id=new_id(),
                    tenant_id=tenant_id,
                    digest=digest,
                    size_bytes=size_bytes,
                    created_at=now(),
                )
            )
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()

    async def set_artifact_metadata(
        self,
        tenant_id: str,
        digest: str,
        *,
        sbom: dict[str, Any] | None,
        manifest: list[dict[str, Any]] | None,
    ) -> None:
        """Record the artifact's SBOM and manifest the first time they are sent."""
        async with self.sessions() as session:
            row = await session.scalar(
                select(Artifact).where(Artifact.tenant_id == tenant_id, Artifact.digest == digest)
            )
            if row is None:
                return
            if sbom is not None and row.sbom is None:
                row.sbom = sbom
            if manifest is not None and row.manifest is None:
                row.manifest = {"files": manifest}
            await session.commit()

    async def get_artifact(self, tenant_id: str, digest: str) -> Artifact | None:
        async with self.sessions() as session:
            return await session.scalar(
                select(Artifact).where(Artifact.tenant_id == tenant_id, Artifact.digest == digest)
            )

    async def artifact_row(self, tenant_id: str, digest: str) -> Artifact:
        """The tenant's artifact, or NotFoundError."""
        row = await self.get_artifact(tenant_id, digest)
        if row is None:
            raise NotFoundError(f"artifact {digest} not found")
        return row

"""What retention and garbage collection read."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select

from aether.store.records.base import (
    RecordsBase,
)
from aether.store.records.schema import (
    App,
    Artifact,
    Deployment,
)

__all__ = ["RetentionRecords"]


class RetentionRecords(RecordsBase):
    async def retention_inputs(
        self,
    ) -> tuple[Sequence[Artifact], Sequence[tuple[str, str, int, str]], dict[tuple[str, str], int]]:
        """Every artifact claim, every (tenant, app, version, digest) of live apps (since
        their latest creation), per-app retention."""
        async with self.sessions() as session:
            artifacts = (await session.scalars(select(Artifact))).all()
            rows = (
                await session.execute(
                    select(Deployment.tenant_id, App.name, Deployment.version, Deployment.digest)
                    .join(App, App.id == Deployment.app_id)
                    # a deleted app keeps nothing, and a redeployed one only its new life's
                    .where(App.deleted_at.is_(None), Deployment.created_at >= App.created_at)
                )
            ).all()
            retain = {
                (a.tenant_id, a.name): a.retain_deployments
                for a in (await session.scalars(select(App))).all()
                if a.retain_deployments
            }
        deployments = [(t, name, int(v), d) for t, name, v, d in rows]
        return artifacts, deployments, retain

    async def delete_artifact_claim(self, tenant_id: str, digest: str) -> None:
        async with self.sessions() as session:
            await session.execute(
                delete(Artifact).where(Artifact.tenant_id == tenant_id, Artifact.digest == digest)
            )
            await session.commit()

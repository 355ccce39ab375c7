"""Deployments and their events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from aether.errors import ConflictError, NotFoundError
from aether.store.records.base import (
    RecordsBase,
    new_id,
    now,
)
from aether.store.records.schema import (
    App,
    Deployment,
    DeploymentEvent,
)

__all__ = ["DeploymentRecords"]


class DeploymentRecords(RecordsBase):
    async def create_deployment(
        self,
        tenant_id: str,
        app: App,
        *,
        digest: str,
        spec: dict[str, Any],
        instances: int,
        rollback_of: int | None = None,
        request_key: str | None = None,
    ) -> tuple[Deployment, bool]:
        """Version N+1 of ``app`` and True; retried if two deploys race for the same number.

        With a ``request_key`` (the request's Idempotency-Key) a deployment already
        created by that request is returned with False instead: the request ran
        before and its answer was lost.
        """
        for _ in range(5):
            if request_key is not None:
                found = await self.deployment_by_request(tenant_id, request_key)
                if found is not None:
                    return found, False
            async with self.sessions() as session:
                latest = await session.scalar(
                    select(func.max(Deployment.version)).where(Deployment.app_id == app.id)
                )
                deployment = Deployment(
                    id=new_id(),
                    tenant_id=tenant_id,
                    app_id=app.id,
                    version=(latest or 0) + 1,
                    digest=digest,
                    spec=spec,
                    instances=instances,
                    status="pending",
                    rollback_of=rollback_of,
                    created_at=now(),
                    request_key=request_key,
                )
                session.add(deployment)
                try:
                    await session.commit()
                    return deployment, True
                except IntegrityError:
                    await session.rollback()
        raise ConflictError(f"too many concurrent deployments of {app.name}; try again")

    async def deployment_by_request(self, tenant_id: str, request_key: str) -> Deployment | None:
        """The deployment the request with this Idempotency-Key created, if any."""
        async with self.sessions() as session:
            found: Deployment | None = await session.scalar(
                select(Deployment).where(
                    Deployment.tenant_id == tenant_id, Deployment.request_key == request_key
                )
            )
            return found

    async def list_deployments(self, tenant_id: str, app: App) -> Sequence[Deployment]:
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(Deployment)
                    .where(Deployment.tenant_id == tenant_id, Deployment.app_id == app.id)
                    .order_by(Deployment.version.desc())
                )
            ).all()

    async def get_deployment(self, tenant_id: str, deployment_id: str) -> Deployment:
        async with self.sessions() as session:
            deployment = await session.scalar(
                select(Deployment).where(
                    Deployment.tenant_id == tenant_id, Deployment.id == deployment_id
                )
            )
        if deployment is None:
            raise NotFoundError(f"deployment {deployment_id!r} not found")
        return deployment

    async def get_deployment_by_version(self, tenant_id: str, app: App, version: int) -> Deployment:
        async with self.sessions() as session:
            deployment = await session.scalar(
                select(Deployment).where(
                    Deployment.tenant_id == tenant_id,
                    Deployment.app_id == app.id,
                    Deployment.version == version,
                )
            )
        if deployment is None:
            raise NotFoundError(f"app {app.name!r} has no version {version}")
        return deployment

    async def set_deployment_status(self, deployment_id: str, status: str) -> bool:
        """Set the status; True if it changed (so events are written once)."""
        async with self.sessions() as session:
            result = await session.execute(
                update(Deployment)
                .where(Deployment.id == deployment_id, Deployment.status != status)
                .values(status=status)
            )
            await session.commit()
            return bool(getattr(result, "rowcount", 0))

    async def add_event(self, deployment_id: str, type_: str, message: str) -> None:
        """Append to the deployment's timeline; nothing when the deployment is gone (its
        tenant was deleted while the leader still retired its instances)."""
        async with self.sessions() as session:
            if await session.get(Deployment, deployment_id) is None:
                return
            session.add(
                DeploymentEvent(
                    deployment_id=deployment_id, type=type_, message=message, created_at=now()
                )
            )
            await session.commit()

    async def list_events(self, deployment_id: str) -> Sequence[DeploymentEvent]:
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(DeploymentEvent)
                    .where(DeploymentEvent.deployment_id == deployment_id)
                    .order_by(DeploymentEvent.id)
                )
            ).all()

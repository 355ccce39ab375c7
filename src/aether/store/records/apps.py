"""Apps, per tenant.

A deleted app (``aether apps rm``) keeps its row, marked ``deleted_at``: its
deployments and events stay in the records, and it is not found, listed or
counted until its name is deployed again, which clears the mark and starts a
new life (``created_at``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from aether.errors import NotFoundError
from aether.store.records.base import (
    RecordsBase,
    new_id,
    now,
)
from aether.store.records.schema import (
    App,
    Deployment,
)

__all__ = ["AppRecords"]


class AppRecords(RecordsBase):
    async def get_app(self, tenant_id: str, name: str) -> App:
        async with self.sessions() as session:
            app = await session.scalar(
                select(App).where(
                    App.tenant_id == tenant_id, App.name == name, App.deleted_at.is_(None)
                )
            )
        if app is None:
            raise NotFoundError(f"app {name!r} not found; deploy it first with `aether deploy`")
        return app

    async def get_or_create_app(self, tenant_id: str, name: str) -> App:
        """The app, created if new, or brought back (a new life) if it was deleted."""
        try:
            return await self.get_app(tenant_id, name)
        except NotFoundError:
            pass
        async with self.sessions() as session:
            revived = await session.execute(
                update(App)
                .where(App.tenant_id == tenant_id, App.name == name, App.deleted_at.is_not(None))
                .values(deleted_at=None, created_at=now())
            )
            await session.commit()
            if getattr(revived, "rowcount", 0):
                return await self.get_app(tenant_id, name)
            app = App(id=new_id(), tenant_id=tenant_id, name=name, created_at=now())
            session.add(app)
            try:
                await session.commit()
                return app
            except IntegrityError:
                await session.rollback()
        return await self.get_app(tenant_id, name)

    async def list_apps(self, tenant_id: str, *, include_deleted: bool = False) -> Sequence[App]:
        query = select(App).where(App.tenant_id == tenant_id)
        if not include_deleted:
            query = query.where(App.deleted_at.is_(None))
        async with self.sessions() as session:
            return (await session.scalars(query.order_by(App.name))).all()

    async def delete_app(self, tenant_id: str, app: App) -> tuple[datetime, list[Deployment]]:
        """Mark the app deleted; its pending and active deployments become ``deleted``.

        Returns the moment and the deployments it ended (the caller records their events).
        """
        moment = now()
        async with self.sessions() as session:
            await session.execute(
                update(App)
                .where(App.tenant_id == tenant_id, App.id == app.id)
                .values(deleted_at=moment)
            )
            ended = list(
                (
                    await session.scalars(
                        select(Deployment).where(
                            Deployment.app_id == app.id,
                            Deployment.status.in_(("pending", "active")),
                        )
                    )
                ).all()
            )
            await session.execute(
                update(Deployment)
                .where(Deployment.id.in_([d.id for d in ended]))
                .values(status="deleted")
            )
            await session.commit()
        return moment, ended

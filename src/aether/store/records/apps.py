"""Apps, per tenant."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from aether.errors import NotFoundError
from aether.store.records.base import (
    RecordsBase,
    new_id,
    now,
)
from aether.store.records.schema import (
    App,
)

__all__ = ["AppRecords"]


class AppRecords(RecordsBase):
    async def get_app(self, tenant_id: str, name: str) -> App:
        async with self.sessions() as session:
            app = await session.scalar(
                select(App).where(App.tenant_id == tenant_id, App.name == name)
            )
        if app is None:
            raise NotFoundError(f"app {name!r} not found; deploy it first with `aether deploy`")
        return app

    async def get_or_create_app(self, tenant_id: str, name: str) -> App:
        try:
            return await self.get_app(tenant_id, name)
        except NotFoundError:
            pass
        async with self.sessions() as session:
            app = App(id=new_id(), tenant_id=tenant_id, name=name, created_at=now())
            session.add(app)
            try:
                await session.commit()
                return app
            except IntegrityError:
                await session.rollback()
        return await self.get_app(tenant_id, name)

    async def list_apps(self, tenant_id: str) -> Sequence[App]:
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(App).where(App.tenant_id == tenant_id).order_by(App.name)
                )
            ).all()

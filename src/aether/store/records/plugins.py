"""The cluster's policy plugins (``plugins``): WebAssembly risk and guard rules."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from aether.errors import ConflictError, NotFoundError
from aether.store.records.base import RecordsBase, now
from aether.store.records.schema import PluginRow

__all__ = ["PluginRecords"]


class PluginRecords(RecordsBase):
    async def put_plugin(self, row: PluginRow) -> tuple[PluginRow, bool]:
        """Store ``row`` under its name, replacing an older version; whether it is new.

        The same name, version and sha256 again is a no-op (an upload repeated);
        the same version with other bytes is a conflict (a version names one module).
        """
        async with self.sessions() as session:
            old = await session.get(PluginRow, row.name)
            if old is not None and old.version == row.version:
                if old.sha256 == row.sha256 and old.kind == row.kind:
                    return old, False
                raise ConflictError(
                    f"plugin {row.name!r} is already at version {row.version!r} with another "
                    "module; upload it under a new --version"
                )
            if old is not None:
                await session.delete(old)
                await session.flush()
            row.created_at = now()
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                raise ConflictError(f"plugin {row.name!r} changed meanwhile; try again") from None
            return row, True

    async def list_plugins(self, kind: str | None = None) -> list[PluginRow]:
        async with self.sessions() as session:
            query = select(PluginRow).order_by(PluginRow.name)
            if kind is not None:
                query = query.where(PluginRow.kind == kind)
            return list((await session.scalars(query)).all())

    async def plugin_digests(self) -> list[tuple[str, str, str]]:
        """(name, kind, sha256) of every plugin: what the leader checks each pass."""
        async with self.sessions() as session:
            rows = await session.execute(
                select(PluginRow.name, PluginRow.kind, PluginRow.sha256).order_by(PluginRow.name)
            )
            return [(n, k, d) for n, k, d in rows.all()]

    async def get_plugin(self, name: str) -> PluginRow:
        async with self.sessions() as session:
            row = await session.get(PluginRow, name)
        if row is None:
            raise NotFoundError(f"no plugin named {name!r}")
        return row

    async def delete_plugin(self, name: str) -> PluginRow:
        async with self.sessions() as session:
            row = await session.get(PluginRow, name)
            if row is None:
                raise NotFoundError(f"no plugin named {name!r}")
            await session.execute(delete(PluginRow).where(PluginRow.name == name))
            await session.commit()
            return row

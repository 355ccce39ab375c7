"""A tenant's named secrets (``secrets``): values arrive here already sealed
(``services/secretbox.py``); this part never sees a plain value."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from aether.store.records.base import RecordsBase, now
from aether.store.records.schema import SecretRow

__all__ = ["SecretRecords"]


class SecretRecords(RecordsBase):
    async def put_secret(self, tenant_id: str, name: str, sealed: str) -> tuple[SecretRow, bool]:
        """Set the tenant's secret ``name`` to ``sealed``; whether it is a new one."""
        for _ in range(2):  # a concurrent first set: the second attempt replaces it
            async with self.sessions() as session:
                row = await session.get(SecretRow, (tenant_id, name))
                stamp = now()
                created = row is None
                if row is None:
                    row = SecretRow(
                        tenant_id=tenant_id,
                        name=name,
                        value=sealed,
                        created_at=stamp,
                        updated_at=stamp,
                    )
                    session.add(row)
                else:
                    row.value, row.updated_at = sealed, stamp
                try:
                    await session.commit()
                except IntegrityError:
                    continue
                return row, created
        raise RuntimeError(f"secret {name!r}: concurrent writes did not settle")

    async def list_secrets(self, tenant_id: str) -> list[SecretRow]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(SecretRow).where(SecretRow.tenant_id == tenant_id).order_by(SecretRow.name)
            )
            return list(rows)

    async def get_secrets(self, tenant_id: str, names: list[str]) -> list[SecretRow]:
        """The tenant's secrets among ``names`` (those it lacks are left out)."""
        if not names:
            return []
        async with self.sessions() as session:
            rows = await session.scalars(
                select(SecretRow).where(SecretRow.tenant_id == tenant_id, SecretRow.name.in_(names))
            )
            return list(rows)

    async def delete_secret(self, tenant_id: str, name: str) -> bool:
        """Remove the tenant's secret ``name``; False if it had none."""
        return await self.delete_owned(SecretRow, tenant_id, name=name)

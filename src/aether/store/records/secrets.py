"""A tenant's named secrets (``secrets``): values arrive here already sealed
(``services/secretbox.py``); this part never sees a plain value.

:meth:`SecretRecords.rewrap_sealed` walks every sealed column (tenants' secrets, models'
API keys) for a key rotation: each change is a compare-and-set on the old sealed
form, so a value set meanwhile is never overwritten with a stale one."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from aether.store.records.base import RecordsBase, now
from aether.store.records.schema import AgentModel, SecretRow

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

    async def rewrap_sealed(self, rewrap: Callable[[str], str | None]) -> tuple[int, int]:
        """Apply ``rewrap`` (a sealed form -> the new one, None: leave it) to every sealed
        value the records hold; (how many changed, how many changed meanwhile and were
        left as they are: sealed by a server with the current key)."""
        changed = skipped = 0
        async with self.sessions() as session:
            secrets = (
                await session.execute(select(SecretRow.tenant_id, SecretRow.name, SecretRow.value))
            ).all()
            models = (
                await session.execute(
                    select(AgentModel.id, AgentModel.api_key).where(AgentModel.api_key.is_not(None))
                )
            ).all()
        for tenant_id, name, value in secrets:
            new = rewrap(value)
            if new is None:
                continue
            async with self.sessions() as session:
                result = await session.execute(
                    update(SecretRow)
                    .where(
                        SecretRow.tenant_id == tenant_id,
                        SecretRow.name == name,
                        SecretRow.value == value,
                    )
                    .values(value=new)
                )
                await session.commit()
            changed, skipped = (changed + 1, skipped) if _rows(result) else (changed, skipped + 1)
        for model_id, api_key in models:
            new = rewrap(api_key) if api_key is not None else None
            if new is None:
                continue
            async with self.sessions() as session:
                result = await session.execute(
                    update(AgentModel)
                    .where(AgentModel.id == model_id, AgentModel.api_key == api_key)
                    .values(api_key=new)
                )
                await session.commit()
            changed, skipped = (changed + 1, skipped) if _rows(result) else (changed, skipped + 1)
        return changed, skipped

    async def sealed_key_ids(self, key_id_of: Callable[[str], str]) -> dict[str, int]:
        """How many sealed values name each key id."""
        counts: dict[str, int] = {}
        async with self.sessions() as session:
            values = list(await session.scalars(select(SecretRow.value)))
            values += [
                v
                for v in await session.scalars(
                    select(AgentModel.api_key).where(AgentModel.api_key.is_not(None))
                )
                if v is not None
            ]
        for value in values:
            key_id = key_id_of(value)
            counts[key_id] = counts.get(key_id, 0) + 1
        return counts


def _rows(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)

"""Idempotency keys of API requests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from aether.store.records.base import (
    RecordsBase,
    now,
)
from aether.store.records.schema import (
    IdempotencyKey,
)

__all__ = ["IdempotencyRecords"]


class IdempotencyRecords(RecordsBase):
    async def get_idempotent(self, tenant_id: str, key: str) -> IdempotencyKey | None:
        async with self.sessions() as session:
            return await session.scalar(
                select(IdempotencyKey).where(
                    IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key
                )
            )

    async def save_idempotent(
        self,
        tenant_id: str,
        key: str,
        request_hash: str,
        status_code: int,
        response: dict[str, Any],
    ) -> None:
        async with self.sessions() as session:
            session.add(
                IdempotencyKey(
                    tenant_id=tenant_id,
                    key=key,
                    request_hash=request_hash,
                    status_code=status_code,
                    response=response,
                    created_at=now(),
                )
            )
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()

"""Sandboxes and the executions in them."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import select, update

from aether.errors import NotFoundError
from aether.store.records.base import (
    RecordsBase,
    now,
)
from aether.store.records.schema import (
    Execution,
    Sandbox,
)

__all__ = ["SandboxRecords"]


class SandboxRecords(RecordsBase):
    async def create_sandbox(
        self,
        tenant_id: str,
        sandbox_id: str,
        *,
        name: str,
        driver: str | None,
        vcpus: int,
        memory_mb: int,
        network: bool,
    ) -> Sandbox:
        async with self.sessions() as session:
            existing = await session.get(Sandbox, sandbox_id)
            if existing is not None:
                return existing
            sandbox = Sandbox(
                id=sandbox_id,
                tenant_id=tenant_id,
                name=name,
                node=None,
                driver=driver or "",
                vcpus=vcpus,
                memory_mb=memory_mb,
                network=network,
                isolated=True,
                status="creating",
                created_at=now(),
                updated_at=now(),
            )
            session.add(sandbox)
            await session.commit()
            return sandbox

    async def get_sandbox(self, sandbox_id: str, tenant_id: str | None = None) -> Sandbox:
        async with self.sessions() as session:
            sandbox = await session.get(Sandbox, sandbox_id)
        if sandbox is None or (tenant_id is not None and sandbox.tenant_id != tenant_id):
            raise NotFoundError(f"sandbox {sandbox_id!r} not found")
        return sandbox

    async def update_sandbox(self, sandbox_id: str, **values: Any) -> None:
        async with self.sessions() as session:
            await session.execute(
                update(Sandbox).where(Sandbox.id == sandbox_id).values(updated_at=now(), **values)
            )
            await session.commit()

    async def list_sandboxes(
        self, tenant_id: str | None, *, include_deleted: bool = False, node: str | None = None
    ) -> Sequence[Sandbox]:
        query = select(Sandbox).order_by(Sandbox.created_at.desc())
        if tenant_id is not None:
            query = query.where(Sandbox.tenant_id == tenant_id)
        if not include_deleted:
            query = query.where(Sandbox.status != "deleted")
        if node is not None:
            query = query.where(Sandbox.node == node)
        async with self.sessions() as session:
            return (await session.scalars(query)).all()

    async def add_execution(self, execution: Execution) -> None:
        await self.add_executions([execution])

    async def add_executions(self, executions: Sequence[Execution]) -> None:
        """Record each execution whose id is not recorded yet, in one transaction."""
        if not executions:
            return
        ids = [e.id for e in executions]
        async with self.sessions() as session:
            known = set(await session.scalars(select(Execution.id).where(Execution.id.in_(ids))))
            fresh = {e.id: e for e in executions if e.id not in known}
            if fresh:
                session.add_all(fresh.values())
                await session.commit()

    async def sandbox_tenants(self, sandbox_ids: Collection[str]) -> dict[str, str]:
        """The tenant of each of the sandboxes that exist, by id."""
        query = select(Sandbox.id, Sandbox.tenant_id).where(Sandbox.id.in_(list(sandbox_ids)))
        async with self.sessions() as session:
            return {sid: tenant for sid, tenant in await session.execute(query)}

    async def list_executions(
        self, tenant_id: str, sandbox_id: str, limit: int = 100
    ) -> Sequence[Execution]:
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(Execution)
                    .where(Execution.tenant_id == tenant_id, Execution.sandbox_id == sandbox_id)
                    .order_by(Execution.started_at.desc())
                    .limit(limit)
                )
            ).all()

    async def get_execution(self, tenant_id: str, execution_id: str) -> Execution:
        async with self.sessions() as session:
            execution = await session.get(Execution, execution_id)
        if execution is None or execution.tenant_id != tenant_id:
            raise NotFoundError(f"execution {execution_id!r} not found")
        return execution

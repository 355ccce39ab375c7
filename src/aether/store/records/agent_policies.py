"""Agent tools, policies and policy enforcements of a tenant (``agent_tools``,
``agent_policies``, ``policy_enforcements``). Only the tenant's own: the built-in tools
and ``default-safe`` are code (``aether.agents``), merged in by the routes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from aether.store.records.base import RecordsBase, now, utc
from aether.store.records.schema import AgentPolicyRow, AgentToolRow, PolicyEnforcementRow

__all__ = ["AgentPolicyRecords", "NewEnforcement"]


@dataclass(frozen=True, slots=True)
class NewEnforcement:
    """A decision to keep (``arguments`` already redacted)."""

    tenant_id: str
    policy_id: str
    policy_version: int
    principal: str
    tool_id: str
    arguments: dict[str, Any]
    decision: str  # allow | deny | approval
    reasons: list[str]
    run_id: str | None = None
    step: int | None = None


class AgentPolicyRecords(RecordsBase):
    # -- tools --

    async def agent_tools(self, tenant_id: str) -> Sequence[AgentToolRow]:
        async with self.sessions() as session:
            query = select(AgentToolRow).where(AgentToolRow.tenant_id == tenant_id)
            return (await session.scalars(query.order_by(AgentToolRow.id))).all()

    async def agent_tool(self, tenant_id: str, tool_id: str) -> AgentToolRow | None:
        async with self.sessions() as session:
            return await session.get(AgentToolRow, (tenant_id, tool_id))

    async def add_agent_tool(
        self, tenant_id: str, tool_id: str, kind: str, definition: dict[str, Any]
    ) -> bool:
        """Add the tool; False when the tenant has one of that id already."""
        async with self.sessions() as session:
            row = AgentToolRow(
                tenant_id=tenant_id, id=tool_id, kind=kind, definition=definition, created_at=now()
            )
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                return False
        return True

    async def put_agent_tool(
        self, tenant_id: str, tool_id: str, kind: str, definition: dict[str, Any]
    ) -> bool:
        """Add or replace the tool; True when it was added."""
        async with self.sessions() as session:
            row = await session.get(AgentToolRow, (tenant_id, tool_id))
            added = row is None
            if row is None:
                row = AgentToolRow(tenant_id=tenant_id, id=tool_id, created_at=now())
                session.add(row)
            row.kind = kind
            row.definition = definition
            await session.commit()
        return added

    async def delete_agent_tool(self, tenant_id: str, tool_id: str) -> bool:
        return await self.delete_owned(AgentToolRow, tenant_id, id=tool_id)

    # -- policies --

    async def agent_policies(self, tenant_id: str) -> Sequence[AgentPolicyRow]:
        async with self.sessions() as session:
            query = select(AgentPolicyRow).where(AgentPolicyRow.tenant_id == tenant_id)
            return (await session.scalars(query.order_by(AgentPolicyRow.id))).all()

    async def agent_policy(self, tenant_id: str, policy_id: str) -> AgentPolicyRow | None:
        async with self.sessions() as session:
            return await session.get(AgentPolicyRow, (tenant_id, policy_id))

    async def add_agent_policy(
        self, tenant_id: str, policy_id: str, definition: dict[str, Any]
    ) -> AgentPolicyRow | None:
        """Add the policy at version 1; None when the tenant has one of that id already."""
        at = now()
        row = AgentPolicyRow(
            tenant_id=tenant_id,
            id=policy_id,
            definition=definition,
            version=1,
            created_at=at,
            updated_at=at,
        )
        async with self.sessions() as session:
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                return None
            await session.refresh(row)
        return row

    async def update_agent_policy(
        self, tenant_id: str, policy_id: str, definition: dict[str, Any]
    ) -> AgentPolicyRow | None:
        """Replace the definition and bump the version; None when there is no such policy."""
        async with self.sessions() as session:
            row = await session.get(AgentPolicyRow, (tenant_id, policy_id), with_for_update=True)
            if row is None:
                return None
            row.definition = definition
            row.version += 1
            row.updated_at = now()
            await session.commit()
            await session.refresh(row)
        return row

    async def delete_agent_policy(self, tenant_id: str, policy_id: str) -> bool:
        return await self.delete_owned(AgentPolicyRow, tenant_id, id=policy_id)

    # -- enforcements --

    async def trim_enforcements_before(self, ts: float) -> int:
        """Delete the policy enforcements older than ``ts`` (epoch seconds); how many."""
        async with self.sessions() as session:
            result = await session.execute(
                delete(PolicyEnforcementRow).where(PolicyEnforcementRow.created_at < utc(ts))
            )
            await session.commit()
        return int(getattr(result, "rowcount", 0) or 0)

    async def add_enforcement(self, new: NewEnforcement) -> PolicyEnforcementRow:
        row = PolicyEnforcementRow(
            tenant_id=new.tenant_id,
            policy_id=new.policy_id,
            policy_version=new.policy_version,
            principal=new.principal,
            tool_id=new.tool_id,
            arguments=new.arguments,
            decision=new.decision,
            reasons=new.reasons,
            run_id=new.run_id,
            step=new.step,
            created_at=now(),
        )
        async with self.sessions() as session:
            session.add(row)
            await session.commit()
            await session.refresh(row)
        return row

    async def enforcements(
        self,
        tenant_id: str,
        *,
        policy_id: str | None = None,
        tool_id: str | None = None,
        decision: str | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> Sequence[PolicyEnforcementRow]:
        """The tenant's decisions, newest first (``before``: older than that id)."""
        query = (
            select(PolicyEnforcementRow)
            .where(PolicyEnforcementRow.tenant_id == tenant_id)
            .order_by(PolicyEnforcementRow.id.desc())
            .limit(limit)
        )
        if before is not None:
            query = query.where(PolicyEnforcementRow.id < before)
        if policy_id is not None:
            query = query.where(PolicyEnforcementRow.policy_id == policy_id)
        if tool_id is not None:
            query = query.where(PolicyEnforcementRow.tool_id == tool_id)
        if decision is not None:
            query = query.where(PolicyEnforcementRow.decision == decision)
        async with self.sessions() as session:
            return (await session.scalars(query)).all()

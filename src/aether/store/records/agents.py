"""A tenant's AI agents (``agents``), every version of their config (``agent_versions``)
and the tenant's own recipes in the agent catalog (``agent_recipes``)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aether.errors import ConflictError
from aether.store.records.base import RecordsBase, now
from aether.store.records.schema import (
    AgentDeploymentRow,
    AgentRecipeRow,
    AgentRow,
    AgentVersionRow,
    Tenant,
)

__all__ = ["AgentRecords", "AgentVersion", "new_agent_id"]


def new_agent_id() -> str:
    """``agt_`` and 24 hex digits."""
    return "agt_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class AgentVersion:
    """The fields of one version of an agent's config (already validated)."""

    model: str
    policy_ids: list[str] = field(default_factory=list)
    tool_ids: list[str] = field(default_factory=list)
    system_prompt: str = ""
    config: dict[str, Any] = field(default_factory=dict)


def _version_row(
    tenant_id: str, agent_id: str, number: int, spec: AgentVersion, by: str
) -> AgentVersionRow:
    return AgentVersionRow(
        agent_id=agent_id,
        version=number,
        tenant_id=tenant_id,
        model=spec.model,
        policy_ids=list(spec.policy_ids),
        tool_ids=list(spec.tool_ids),
        system_prompt=spec.system_prompt,
        config=dict(spec.config),
        created_at=now(),
        created_by=by,
    )


def _by_id_or_name(tenant_id: str, agent_id: str) -> Any:
    """The tenant's agent of that id (``agt_…``) or name (names never start so)."""
    column = AgentRow.id if agent_id.startswith("agt_") else AgentRow.name
    return select(AgentRow).where(AgentRow.tenant_id == tenant_id, column == agent_id)


async def _owned(session: AsyncSession, tenant_id: str, agent_id: str) -> AgentRow | None:
    query = _by_id_or_name(tenant_id, agent_id).with_for_update()
    row: AgentRow | None = (await session.scalars(query)).first()
    return row


async def _drop_deployment(session: AsyncSession, agent_id: str) -> None:
    await session.execute(delete(AgentDeploymentRow).where(AgentDeploymentRow.agent_id == agent_id))


class AgentRecords(RecordsBase):
    # -- agents --

    async def add_agent(
        self, tenant_id: str, name: str, spec: AgentVersion, by: str
    ) -> tuple[AgentRow, AgentVersionRow]:
        """Add the agent at version 1; a name the tenant has already is a 409."""
        at = now()
        agent = AgentRow(
            id=new_agent_id(),
            tenant_id=tenant_id,
            name=name,
            status="created",
            current_version=1,
            created_at=at,
            updated_at=at,
            disabled_at=None,
        )
        version = _version_row(tenant_id, agent.id, 1, spec, by)
        async with self.sessions() as session:
            session.add(agent)
            try:
                await session.flush()
                session.add(version)
                await session.commit()
            except IntegrityError:
                raise ConflictError(f"agent {name!r} already exists") from None
        return agent, version

    async def agent(self, tenant_id: str, agent_id: str) -> AgentRow | None:
        """The tenant's agent by id or name (another tenant's: None)."""
        async with self.sessions() as session:
            row: AgentRow | None = (
                await session.scalars(_by_id_or_name(tenant_id, agent_id))
            ).first()
        return row

    async def agents(
        self,
        tenant_id: str,
        *,
        status: str | None = None,
        name: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[tuple[AgentRow, AgentVersionRow]]:
        """The tenant's agents by name, each with its version in use (``after``: the
        names after that one)."""
        in_use = and_(
            AgentVersionRow.agent_id == AgentRow.id,
            AgentVersionRow.version == AgentRow.current_version,
        )
        query = select(AgentRow, AgentVersionRow).join(AgentVersionRow, in_use)
        query = query.where(AgentRow.tenant_id == tenant_id)
        if status is not None:
            query = query.where(AgentRow.status == status)
        if name is not None:
            query = query.where(AgentRow.name == name)
        if after is not None:
            query = query.where(AgentRow.name > after)
        async with self.sessions() as session:
            rows = await session.execute(query.order_by(AgentRow.name).limit(limit))
            return [(agent, version) for agent, version in rows]

    async def agent_version(self, agent_id: str, version: int) -> AgentVersionRow | None:
        async with self.sessions() as session:
            return await session.get(AgentVersionRow, (agent_id, version))

    async def agent_versions(self, tenant_id: str, agent_id: str) -> Sequence[AgentVersionRow]:
        """The agent's versions, newest first."""
        query = (
            select(AgentVersionRow)
            .where(AgentVersionRow.tenant_id == tenant_id, AgentVersionRow.agent_id == agent_id)
            .order_by(AgentVersionRow.version.desc())
        )
        async with self.sessions() as session:
            return (await session.scalars(query)).all()

    async def add_agent_version(
        self, tenant_id: str, agent_id: str, spec: AgentVersion, by: str
    ) -> tuple[AgentRow, AgentVersionRow] | None:
        """A new version of the agent's config, now in use; None: no such agent."""
        async with self.sessions() as session:
            agent = await _owned(session, tenant_id, agent_id)
            if agent is None:
                return None
            version = _version_row(tenant_id, agent.id, agent.current_version + 1, spec, by)
            session.add(version)
            agent.current_version = version.version
            agent.updated_at = version.created_at
            try:
                await session.commit()
            except IntegrityError:  # another change took this version number first
                raise ConflictError("the agent changed meanwhile: try again") from None
            await session.refresh(agent)
        return agent, version

    async def set_agent_status(self, tenant_id: str, agent_id: str, status: str) -> AgentRow | None:
        """``disabled`` (stamps ``disabled_at`` and drops the deployment: its replicas are
        withdrawn) or ``created`` (only from ``disabled``: enabling a deployed agent
        changes nothing); the same status again changes nothing. None: no such agent."""
        async with self.sessions() as session:
            agent = await _owned(session, tenant_id, agent_id)
            if agent is None:
                return None
            if status == "created" and agent.status != "disabled":
                return agent
            if agent.status != status:
                at = now()
                agent.status = status
                agent.updated_at = at
                agent.disabled_at = at if status == "disabled" else None
                if status == "disabled":
                    await _drop_deployment(session, agent.id)
                await session.commit()
                await session.refresh(agent)
        return agent

    # -- deployments --

    async def deploy_agent(
        self, tenant_id: str, agent_id: str, version: int, replicas: int, by: str
    ) -> tuple[AgentRow, AgentDeploymentRow] | None:
        """Deploy (or redeploy) the agent at ``version`` with ``replicas``: status
        ``deployed``. None: no such agent; a disabled agent is a 409 ``agent_disabled``."""
        async with self.sessions() as session:
            agent = await _owned(session, tenant_id, agent_id)
            if agent is None:
                return None
            if agent.status == "disabled":
                raise ConflictError(
                    f"agent {agent.name!r} is disabled: enable it first", code="agent_disabled"
                )
            at = now()
            row = await session.get(AgentDeploymentRow, agent.id)
            if row is None:
                row = AgentDeploymentRow(agent_id=agent.id, tenant_id=tenant_id)
                session.add(row)
            row.version, row.replicas, row.deployed_at, row.deployed_by = version, replicas, at, by
            agent.status = "deployed"
            agent.updated_at = at
            await session.commit()
            await session.refresh(agent)
            await session.refresh(row)
        return agent, row

    async def undeploy_agent(self, tenant_id: str, agent_id: str) -> AgentRow | None:
        """Drop the agent's deployment (status back to ``created``; a disabled agent
        stays disabled). None: no such agent."""
        async with self.sessions() as session:
            agent = await _owned(session, tenant_id, agent_id)
            if agent is None:
                return None
            await _drop_deployment(session, agent.id)
            if agent.status == "deployed":
                agent.status = "created"
                agent.updated_at = now()
            await session.commit()
            await session.refresh(agent)
        return agent

    async def agent_deployment(self, agent_id: str) -> AgentDeploymentRow | None:
        async with self.sessions() as session:
            return await session.get(AgentDeploymentRow, agent_id)

    async def agent_deployments(self) -> list[tuple[AgentRow, AgentDeploymentRow, str]]:
        """Every deployed agent of every tenant, with its tenant's name (the leader
        places their replicas; routers serve them under the tenant's name)."""
        query = (
            select(AgentRow, AgentDeploymentRow, Tenant.name)
            .join(AgentDeploymentRow, AgentDeploymentRow.agent_id == AgentRow.id)
            .join(Tenant, Tenant.id == AgentRow.tenant_id)
        )
        async with self.sessions() as session:
            rows = await session.execute(query.order_by(AgentRow.id))
            return [(agent, row, tenant) for agent, row, tenant in rows]

    # -- recipes --

    async def agent_recipes(self, tenant_id: str) -> Sequence[AgentRecipeRow]:
        query = select(AgentRecipeRow).where(AgentRecipeRow.tenant_id == tenant_id)
        async with self.sessions() as session:
            return (await session.scalars(query.order_by(AgentRecipeRow.id))).all()

    async def agent_recipe(self, tenant_id: str, recipe_id: str) -> AgentRecipeRow | None:
        async with self.sessions() as session:
            return await session.get(AgentRecipeRow, (tenant_id, recipe_id))

    async def add_agent_recipe(
        self, tenant_id: str, recipe_id: str, definition: dict[str, Any]
    ) -> bool:
        """Add the recipe; False when the tenant has one of that id already."""
        row = AgentRecipeRow(
            tenant_id=tenant_id, id=recipe_id, definition=definition, created_at=now()
        )
        async with self.sessions() as session:
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                return False
        return True

    async def delete_agent_recipe(self, tenant_id: str, recipe_id: str) -> bool:
        return await self.delete_owned(AgentRecipeRow, tenant_id, id=recipe_id)

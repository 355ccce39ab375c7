"""What the cluster event stream reads from the records: rows after a cursor, by id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select

from aether.model.names import cluster_name
from aether.store.records.base import RecordsBase, epoch
from aether.store.records.schema import (
    App,
    DecisionRow,
    Deployment,
    DeploymentEvent,
    RiskAssessmentRow,
    Tenant,
)

__all__ = ["DeploymentEventRow", "EventRecords", "RevertRow"]


@dataclass(frozen=True)
class DeploymentEventRow:
    """A deployment event with what the stream needs to show it: app, version, tenant."""

    event: DeploymentEvent
    app: str
    version: int
    tenant_id: str


@dataclass(frozen=True)
class RevertRow:
    """A rollout the leader reverted (a deployment event ``reverted``)."""

    id: int
    app: str  # the app's cluster name
    tenant: str  # the tenant's name
    at: float


class EventRecords(RecordsBase):
    async def reverts_after(self, after: int) -> list[RevertRow]:
        """The ``reverted`` deployment events with an id above ``after``, oldest first."""
        query = (
            select(DeploymentEvent.id, DeploymentEvent.created_at, App.name, Tenant.name)
            .join(Deployment, Deployment.id == DeploymentEvent.deployment_id)
            .join(App, App.id == Deployment.app_id)
            .join(Tenant, Tenant.id == Deployment.tenant_id)
            .where(DeploymentEvent.id > after, DeploymentEvent.type == "reverted")
            .order_by(DeploymentEvent.id)
        )
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        return [
            RevertRow(row_id, cluster_name(app, tenant), tenant, epoch(at))
            for row_id, at, app, tenant in rows
        ]

    async def event_heads(self) -> tuple[int, int, int]:
        """The newest id of deployment events, decisions and risk assessments (0: none)."""
        async with self.sessions() as session:
            heads = []
            for column in (DeploymentEvent.id, DecisionRow.id, RiskAssessmentRow.id):
                heads.append(int(await session.scalar(select(func.max(column))) or 0))
        return heads[0], heads[1], heads[2]

    async def deployment_events_after(self, after: int, limit: int) -> list[DeploymentEventRow]:
        """Deployment events with an id above ``after``, oldest first."""
        query = (
            select(DeploymentEvent, App.name, Deployment.version, Deployment.tenant_id)
            .join(Deployment, Deployment.id == DeploymentEvent.deployment_id)
            .join(App, App.id == Deployment.app_id)
            .where(DeploymentEvent.id > after)
            .order_by(DeploymentEvent.id)
            .limit(limit)
        )
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        return [
            DeploymentEventRow(event, name, version, tenant)
            for event, name, version, tenant in rows
        ]

    async def decisions_after(self, after: int, limit: int) -> Sequence[DecisionRow]:
        """Decisions with an id above ``after``, oldest first."""
        query = (
            select(DecisionRow).where(DecisionRow.id > after).order_by(DecisionRow.id).limit(limit)
        )
        async with self.sessions() as session:
            return (await session.scalars(query)).all()

    async def risk_after(
        self, after: int, limit: int
    ) -> list[tuple[RiskAssessmentRow, str | None]]:
        """Risk assessments with an id above ``after``, oldest first, each with the status
        of its node's assessment before it (None: its first)."""
        async with self.sessions() as session:
            rows = (
                await session.scalars(
                    select(RiskAssessmentRow)
                    .where(RiskAssessmentRow.id > after)
                    .order_by(RiskAssessmentRow.id)
                    .limit(limit)
                )
            ).all()
            before: dict[str, str | None] = {}
            for node in sorted({row.node for row in rows}):
                before[node] = await session.scalar(
                    select(RiskAssessmentRow.status)
                    .where(RiskAssessmentRow.node == node, RiskAssessmentRow.id <= after)
                    .order_by(RiskAssessmentRow.id.desc())
                    .limit(1)
                )
        out = []
        for row in rows:
            out.append((row, before.get(row.node)))
            before[row.node] = row.status
        return out

    async def app_tenants(self) -> dict[str, str]:
        """Every app's cluster name (``model.names``: what the state store's keys name)
        and its tenant's id."""
        query = select(App.name, Tenant.name, App.tenant_id).join(
            Tenant, Tenant.id == App.tenant_id
        )
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        return {cluster_name(app, tenant): tenant_id for app, tenant, tenant_id in rows}

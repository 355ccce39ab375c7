"""The leader's agent placement loop: keep each deployed agent at its replicas.

Every second (at most) it reads the deployed agents (records), the live nodes and
their instances (state store), the risk engine's verdicts and the placements
(``agents/{agent_id}``), asks the pure :func:`aether.core.agent_placement.plan` for
each agent's nodes, and writes the placements that changed, fenced by its
leadership. A placement without a deployment (undeployed, disabled, its tenant
gone) is removed. Each change (a replica placed, moved off a lost, draining or
risky node, removed) is recorded as a controller decision of kind ``agent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from aether.core.agent_placement import AgentChange, AgentNode, AgentWant, plan
from aether.model.decisions import Decision
from aether.model.placements import AgentPlacement
from aether.model.risk import RiskAssessment
from aether.server.context import ServerContext
from aether.server.services.agent_placements import placement_key, read_placements
from aether.server.services.cluster import ClusterSnapshot, dump, read_snapshot
from aether.store.base import Compare, Delete, Put
from aether.store.election import Leadership
from aether.store.records.schema import AgentRow

__all__ = ["AgentPlacer", "RiskVerdicts"]

log = logging.getLogger("aether.agents")

TICK = 1.0


class RiskVerdicts(Protocol):
    """What placement reads from the risk engine."""

    def assessments(self) -> dict[str, RiskAssessment]: ...


def _nodes(snap: ClusterSnapshot, risk: Mapping[str, RiskAssessment]) -> list[AgentNode]:
    """The live nodes as placement sees them: risk, free CPU, instances they run."""
    load: Counter[str] = Counter()
    used: defaultdict[str, float] = defaultdict(float)
    for inst, _ in snap.instances.values():
        load[inst.node] += 1
        used[inst.node] += inst.spec.resources.cpu
    views = []
    for node, _ in snap.nodes.values():
        verdict = risk.get(node.id)
        views.append(
            AgentNode(
                id=node.id,
                draining=node.draining,
                risk=None if verdict is None else str(verdict.status),
                free_cpu=node.capabilities.cpus - used[node.id],
                load=load[node.id],
            )
        )
    return views


def _decision(agent: AgentRow, change: AgentChange, replicas: int) -> Decision:
    return Decision(
        layer=1,
        kind="agent",
        target=agent.name,
        action={
            "agent": agent.id,
            "change": change.action,
            "from": change.from_node,
            "to": change.to_node,
        },
        inputs={"replicas": replicas},
        reason=change.reason,
        tenant=agent.tenant_id,
    )


class AgentPlacer:
    def __init__(self, ctx: ServerContext, *, risk: RiskVerdicts | None = None) -> None:
        self.ctx = ctx
        self.risk = risk
        self.clock: Callable[[], float] = time.time

    async def run(self, leadership: Leadership) -> None:
        while not leadership.lost.is_set():
            try:
                await self.step(leadership)
            except Exception:
                log.exception("agent placement failed; trying again")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK):
                    await leadership.lost.wait()

    async def step(self, leadership: Leadership) -> None:
        deployed = await self.ctx.records.agent_deployments()
        placed = await read_placements(self.ctx.store)
        if not deployed and not placed:  # no agent deployed: nothing to read the cluster for
            return
        snap = await read_snapshot(self.ctx.store)
        risk = self.risk.assessments() if self.risk is not None else {}
        wants = [AgentWant(agent.id, row.replicas) for agent, row, _ in deployed]
        current = {agent_id: p.nodes for agent_id, p in placed.items()}
        plans = plan(wants, current, _nodes(snap, risk))
        fence = leadership.fence()
        for agent, row, tenant in deployed:
            placement = AgentPlacement(
                agent_id=agent.id,
                tenant=tenant,
                name=agent.name,
                version=row.version,
                replicas=row.replicas,
                nodes=list(plans[agent.id].nodes),
            )
            if placement != placed.get(agent.id):
                await self._write(agent, placement, plans[agent.id].changes, fence)
        gone = set(placed) - {agent.id for agent, _, _ in deployed}
        for agent_id in gone:
            await self.ctx.store.txn([fence], [Delete(placement_key(agent_id))])

    async def _write(
        self,
        agent: AgentRow,
        placement: AgentPlacement,
        changes: Sequence[AgentChange],
        fence: Compare,
    ) -> None:
        put = Put(placement_key(agent.id), dump(placement))
        if not (await self.ctx.store.txn([fence], [put])).succeeded:
            return  # no longer the leader
        now = self.clock()
        for change in changes:
            decision = _decision(agent, change, placement.replicas)
            await self.ctx.records.record_decision(decision, "applied", "", now)

"""The controller's decisions (aether.server.leader.controller)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, or_, select

from aether.model.decisions import Decision
from aether.store.records.base import (
    RecordsBase,
)
from aether.store.records.schema import (
    DecisionRow,
)

__all__ = ["DecisionRecords"]


class DecisionRecords(RecordsBase):
    async def add_decision(
        self,
        *,
        ts: float,
        layer: int,
        kind: str,
        target: str,
        action: dict[str, Any],
        inputs: dict[str, Any],
        reason: str,
        outcome: str,
        detail: str = "",
        tenant_id: str | None = None,
    ) -> DecisionRow:
        row = DecisionRow(
            ts=ts,
            layer=layer,
            kind=kind,
            target=target[:128],
            tenant_id=tenant_id,
            action=action,
            inputs=inputs,
            reason=reason,
            outcome=outcome,
            detail=detail,
        )
        async with self.sessions() as session:
            session.add(row)
            await session.commit()
            return row

    async def record_decision(
        self, decision: Decision, outcome: str, detail: str, ts: float
    ) -> DecisionRow:
        """Record ``decision`` as taken at ``ts`` with its outcome."""
        return await self.add_decision(
            ts=ts,
            layer=decision.layer,
            kind=decision.kind,
            target=decision.target,
            action=decision.action,
            inputs=decision.inputs,
            reason=decision.reason,
            outcome=outcome,
            detail=detail,
            tenant_id=decision.tenant,
        )

    async def list_decisions(
        self,
        tenant_id: str | None,
        *,
        layer: int | None = None,
        kind: str | None = None,
        target: str | tuple[str, ...] | None = None,
        outcome: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> Sequence[DecisionRow]:
        """Newest first. A tenant sees its apps' decisions and the cluster's drains and
        undrains; ``tenant_id`` None sees every decision (adviser failures included).
        ``target``: one, or any of several."""
        query = select(DecisionRow).order_by(DecisionRow.id.desc()).limit(limit)
        if tenant_id is not None:
            query = query.where(
                or_(
                    DecisionRow.tenant_id == tenant_id,
                    DecisionRow.tenant_id.is_(None) & DecisionRow.kind.in_(("drain", "undrain")),
                )
            )
        if layer is not None:
            query = query.where(DecisionRow.layer == layer)
        if kind is not None:
            query = query.where(DecisionRow.kind == kind)
        if isinstance(target, tuple):
            query = query.where(DecisionRow.target.in_(target))
        elif target is not None:
            query = query.where(DecisionRow.target == target)
        if outcome is not None:
            query = query.where(DecisionRow.outcome == outcome)
        if since is not None:
            query = query.where(DecisionRow.ts >= since)
        async with self.sessions() as session:
            return (await session.scalars(query)).all()

    async def delete_decisions_before(self, ts: float) -> int:
        async with self.sessions() as session:
            result = await session.execute(delete(DecisionRow).where(DecisionRow.ts < ts))
            await session.commit()
        return int(getattr(result, "rowcount", 0) or 0)

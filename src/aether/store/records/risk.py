"""Signals and risk assessments (cluster-level, not tenant-owned)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select

from aether.store.records.base import (
    RecordsBase,
    now,
)
from aether.store.records.schema import (
    RiskAssessmentRow,
    SignalRow,
)

__all__ = ["RiskRecords"]


class RiskRecords(RecordsBase):
    async def add_signals(self, signals: Sequence[dict[str, Any]]) -> list[int]:
        """Store signals (node, kind, value, source, ts); their ids, in order."""
        rows = [SignalRow(created_at=now(), **signal) for signal in signals]
        async with self.sessions() as session:
            session.add_all(rows)
            await session.commit()
        return [row.id for row in rows]

    async def list_signals(
        self,
        *,
        node: str | None = None,
        kind: str | None = None,
        source: str | None = None,
        limit: int = 100,
    ) -> Sequence[SignalRow]:
        """Newest first."""
        query = select(SignalRow).order_by(SignalRow.id.desc()).limit(limit)
        if node is not None:
            query = query.where(SignalRow.node == node)
        if kind is not None:
            query = query.where(SignalRow.kind == kind)
        if source is not None:
            query = query.where(SignalRow.source == source)
        async with self.sessions() as session:
            return (await session.scalars(query)).all()

    async def read_signals(
        self,
        after_id: int,
        *,
        created_since: datetime | None = None,
        observed_since: float | None = None,
    ) -> Sequence[SignalRow]:
        """Signals with an id above ``after_id`` -- or created since ``created_since``,
        to catch rows that committed after a higher id was read -- observed since
        ``observed_since``; in id order."""
        newer = SignalRow.id > after_id
        query = select(SignalRow).order_by(SignalRow.id)
        if created_since is not None:
            query = query.where(or_(newer, SignalRow.created_at >= created_since))
        else:
            query = query.where(newer)
        if observed_since is not None:
            query = query.where(SignalRow.ts >= observed_since)
        async with self.sessions() as session:
            return (await session.scalars(query)).all()

    async def latest_signals_by_node(self, source: str) -> dict[str, SignalRow]:
        """Each node's newest signal from ``source``."""
        newest = (
            select(func.max(SignalRow.id))
            .where(SignalRow.source == source)
            .group_by(SignalRow.node)
        )
        async with self.sessions() as session:
            rows = (await session.scalars(select(SignalRow).where(SignalRow.id.in_(newest)))).all()
        return {row.node: row for row in rows}

    async def add_risk_assessments(self, assessments: Sequence[dict[str, Any]]) -> None:
        """Store verdicts (node, status, confidence, root_cause, rule, inputs, ts)."""
        if not assessments:
            return
        async with self.sessions() as session:
            session.add_all(RiskAssessmentRow(**a) for a in assessments)
            await session.commit()

    async def latest_risk_assessments(self) -> Sequence[RiskAssessmentRow]:
        """Each node's newest stored verdict, by node."""
        newest = select(func.max(RiskAssessmentRow.id)).group_by(RiskAssessmentRow.node)
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(RiskAssessmentRow)
                    .where(RiskAssessmentRow.id.in_(newest))
                    .order_by(RiskAssessmentRow.node)
                )
            ).all()

    async def risk_history(self, node: str, limit: int = 50) -> Sequence[RiskAssessmentRow]:
        """A node's stored verdicts, newest first."""
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(RiskAssessmentRow)
                    .where(RiskAssessmentRow.node == node)
                    .order_by(RiskAssessmentRow.id.desc())
                    .limit(limit)
                )
            ).all()

    async def prune_risk_history(self, signals_before: datetime, assessments_before: float) -> int:
        """Retention: delete signals created and verdicts made before the cut-offs."""
        async with self.sessions() as session:
            a = await session.execute(
                delete(SignalRow).where(SignalRow.created_at < signals_before)
            )
            b = await session.execute(
                delete(RiskAssessmentRow).where(RiskAssessmentRow.ts < assessments_before)
            )
            await session.commit()
        return int(getattr(a, "rowcount", 0) or 0) + int(getattr(b, "rowcount", 0) or 0)

"""Telemetry roll-ups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert, select

from aether.store.records.base import (
    RecordsBase,
)
from aether.store.records.schema import (
    MetricRollup,
)

__all__ = ["RollupRecords"]


class RollupRecords(RecordsBase):
    async def write_rollups(
        self, minute: float, rows: Sequence[dict[str, Any]], *, replace: bool = True
    ) -> None:
        """Store roll-ups of one minute; ``replace``: first delete any of that minute.

        Each row has ``kind``, ``name``, ``samples``, ``avg`` and ``max`` (a new
        leader may write a minute its predecessor wrote too: the newest wins).
        """
        async with self.sessions() as session:
            if replace:
                await session.execute(delete(MetricRollup).where(MetricRollup.minute == minute))
            if rows:  # one bulk INSERT (thousands of nodes: no ORM unit of work)
                await session.execute(
                    insert(MetricRollup),
                    [
                        {
                            "kind": row["kind"],
                            "name": row["name"],
                            "minute": minute,
                            "samples": row["samples"],
                            "avg_values": row["avg"],
                            "max_values": row["max"],
                        }
                        for row in rows
                    ],
                )
            await session.commit()

    async def list_rollups(
        self, kind: str, name: str, since: float, until: float | None = None, limit: int = 1440
    ) -> Sequence[MetricRollup]:
        """One node's or app's roll-ups from ``since`` (minute start), oldest first."""
        query = select(MetricRollup).where(
            MetricRollup.kind == kind, MetricRollup.name == name, MetricRollup.minute >= since
        )
        if until is not None:
            query = query.where(MetricRollup.minute < until)
        async with self.sessions() as session:
            return (await session.scalars(query.order_by(MetricRollup.minute).limit(limit))).all()

    async def delete_rollups_before(self, minute: float) -> int:
        """Retention: delete the roll-ups of minutes that started before ``minute``."""
        async with self.sessions() as session:
            result = await session.execute(delete(MetricRollup).where(MetricRollup.minute < minute))
            await session.commit()
        return int(getattr(result, "rowcount", 0) or 0)

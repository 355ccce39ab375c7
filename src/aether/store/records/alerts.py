"""Alerts and silences (``aether.server.leader.alerts``, ``/api/v1/alerts``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, or_, select

from aether.store.records.base import RecordsBase
from aether.store.records.schema import AlertRow, AlertSilenceRow

__all__ = ["AlertRecords"]


class AlertRecords(RecordsBase):
    async def list_alerts(
        self, tenant: str | None, *, cluster: bool, state: str | None = None
    ) -> Sequence[AlertRow]:
        """The alerts a caller sees: ``tenant``'s (None: every tenant's), and the
        cluster's when ``cluster``; newest change first."""
        query = select(AlertRow).order_by(AlertRow.updated_at.desc())
        if tenant is not None:
            scope = [AlertRow.tenant == tenant]
            if cluster:
                scope.append(AlertRow.tenant.is_(None))
            query = query.where(or_(*scope))
        elif not cluster:
            query = query.where(AlertRow.tenant.is_not(None))
        if state is not None:
            query = query.where(AlertRow.state == state)
        async with self.sessions() as session:
            return (await session.scalars(query)).all()

    async def save_alerts(self, rows: Iterable[dict[str, Any]], gone: Iterable[str]) -> None:
        """Upsert alerts (every column by name) and delete the fingerprints in ``gone``."""
        async with self.sessions() as session:
            for values in rows:
                row = await session.get(AlertRow, values["fingerprint"])
                if row is None:
                    session.add(AlertRow(**values))
                else:
                    for key, value in values.items():
                        setattr(row, key, value)
            gone = list(gone)
            if gone:
                await session.execute(delete(AlertRow).where(AlertRow.fingerprint.in_(gone)))
            await session.commit()

    async def add_silence(self, values: dict[str, Any]) -> AlertSilenceRow:
        row = AlertSilenceRow(**values)
        async with self.sessions() as session:
            session.add(row)
            await session.commit()
            return row

    async def list_silences(self, tenant: str | None) -> Sequence[AlertSilenceRow]:
        """``tenant``'s silences (None: all of them), newest end first."""
        query = select(AlertSilenceRow).order_by(AlertSilenceRow.ends_at.desc())
        if tenant is not None:
            query = query.where(AlertSilenceRow.tenant == tenant)
        async with self.sessions() as session:
            return (await session.scalars(query)).all()

    async def delete_silence(self, silence_id: str, tenant: str | None) -> bool:
        """Delete a silence of ``tenant`` (None: any); False when there is none."""
        query = delete(AlertSilenceRow).where(AlertSilenceRow.id == silence_id)
        if tenant is not None:
            query = query.where(AlertSilenceRow.tenant == tenant)
        async with self.sessions() as session:
            result = await session.execute(query)
            await session.commit()
            return bool(getattr(result, "rowcount", 0))

    async def note_alert(self, fingerprint: str, **values: Any) -> None:
        """Set ``values`` on an alert (the notifier's attempts, the runbook's task and
        output) without touching its state."""
        async with self.sessions() as session:
            row = await session.get(AlertRow, fingerprint)
            if row is not None:
                for key, value in values.items():
                    setattr(row, key, value)
                await session.commit()

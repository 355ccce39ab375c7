"""Agent runs: threads, runs, their steps and their event streams (``agent_threads``,
``agent_runs``, ``agent_run_steps``, ``agent_run_events``)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aether.errors import ConflictError
from aether.store.records.base import RecordsBase, now
from aether.store.records.schema import (
    AgentRunEventRow,
    AgentRunFileRow,
    AgentRunRow,
    AgentRunStepRow,
    AgentThreadRow,
    PolicyEnforcementRow,
    Tenant,
)

__all__ = ["RunRecords", "StepEvent", "Usage", "new_run_id", "new_thread_id"]

#: an event made from a step as written (its number is known only then)
StepEvent = Callable[[AgentRunStepRow], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Usage:
    """What a step adds to its run's totals."""

    steps: int = 0
    tool_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0


def _usage_update(run_id: str, usage: Usage) -> Any:
    return (
        update(AgentRunRow)
        .where(AgentRunRow.id == run_id)
        .values(
            steps=AgentRunRow.steps + usage.steps,
            tool_calls=AgentRunRow.tool_calls + usage.tool_calls,
            tokens_in=AgentRunRow.tokens_in + usage.tokens_in,
            tokens_out=AgentRunRow.tokens_out + usage.tokens_out,
            cost=AgentRunRow.cost + usage.cost,
        )
    )


async def _append_events(
    session: AsyncSession, tenant_id: str, run_id: str, events: Sequence[tuple[str, dict[str, Any]]]
) -> list[int]:
    """Add ``events`` after the run's last one, in ``session`` (the caller commits)."""
    if not events:
        return []
    last = await session.scalar(
        select(func.max(AgentRunEventRow.seq)).where(AgentRunEventRow.run_id == run_id)
    )
    at = now()
    seqs = []
    for offset, (type_, data) in enumerate(events, start=1):
        seq = (last or 0) + offset
        session.add(
            AgentRunEventRow(
                run_id=run_id, seq=seq, tenant_id=tenant_id, type=type_, data=data, created_at=at
            )
        )
        seqs.append(seq)
    return seqs


def new_run_id() -> str:
    return "run_" + secrets.token_hex(12)


def new_thread_id() -> str:
    return "thr_" + secrets.token_hex(12)


class RunRecords(RecordsBase):
    async def tenant_name(self, tenant_id: str) -> str:
        async with self.sessions() as session:
            row = await session.get(Tenant, tenant_id)
        return row.name if row is not None else tenant_id

    # -- threads --

    async def thread_for(
        self, tenant_id: str, agent_id: str, thread_id: str | None
    ) -> AgentThreadRow | None:
        """The thread (made on first use); None when the id is another agent's or
        another tenant's thread."""
        at = now()
        async with self.sessions() as session:
            if thread_id is not None:
                row = await session.get(AgentThreadRow, thread_id)
                if row is not None:
                    if row.tenant_id != tenant_id or row.agent_id != agent_id:
                        return None
                    row.updated_at = at
                    await session.commit()
                    return row
            row = AgentThreadRow(
                id=thread_id or new_thread_id(),
                tenant_id=tenant_id,
                agent_id=agent_id,
                created_at=at,
                updated_at=at,
            )
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:  # made by a concurrent first run of the same thread
                await session.rollback()
                found = await session.get(AgentThreadRow, row.id)
                if found is None or found.tenant_id != tenant_id or found.agent_id != agent_id:
                    return None
                return found
        return row

    async def thread(self, tenant_id: str, thread_id: str) -> AgentThreadRow | None:
        async with self.sessions() as session:
            row = await session.get(AgentThreadRow, thread_id)
        return row if row is not None and row.tenant_id == tenant_id else None

    # -- runs --

    async def add_run(self, row: AgentRunRow) -> AgentRunRow:
        async with self.sessions() as session:
            session.add(row)
            await session.commit()
            await session.refresh(row)
        return row

    async def run(self, run_id: str, tenant_id: str | None = None) -> AgentRunRow | None:
        """The run (of ``tenant_id`` when given: another tenant's is None)."""
        async with self.sessions() as session:
            row = await session.get(AgentRunRow, run_id)
        if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
            return None
        return row

    async def run_with_steps(
        self, run_id: str
    ) -> tuple[AgentRunRow | None, Sequence[AgentRunStepRow]]:
        """The run and its steps in order, read together."""
        query = select(AgentRunStepRow).where(AgentRunStepRow.run_id == run_id)
        async with self.sessions() as session:
            run = await session.get(AgentRunRow, run_id)
            steps = (await session.scalars(query.order_by(AgentRunStepRow.seq))).all()
        return run, steps

    async def runs(
        self,
        tenant_id: str,
        *,
        agent_id: str | None = None,
        thread_id: str | None = None,
        statuses: Collection[str] | None = None,
        before: datetime | None = None,
        limit: int = 100,
        oldest_first: bool = False,
    ) -> Sequence[AgentRunRow]:
        query = select(AgentRunRow).where(AgentRunRow.tenant_id == tenant_id)
        if agent_id is not None:
            query = query.where(AgentRunRow.agent_id == agent_id)
        if thread_id is not None:
            query = query.where(AgentRunRow.thread_id == thread_id)
        if statuses is not None:
            query = query.where(AgentRunRow.status.in_(list(statuses)))
        if before is not None:
            query = query.where(AgentRunRow.created_at < before)
        order = AgentRunRow.created_at.asc() if oldest_first else AgentRunRow.created_at.desc()
        async with self.sessions() as session:
            return (await session.scalars(query.order_by(order, AgentRunRow.id).limit(limit))).all()

    async def set_run(
        self, run_id: str, *, only_from: Collection[str] | None = None, **fields: Any
    ) -> bool:
        """Change the run's fields; with ``only_from``, only while its status is one of
        those (False: it was not, nothing changed)."""
        query = update(AgentRunRow).where(AgentRunRow.id == run_id)
        if only_from is not None:
            query = query.where(AgentRunRow.status.in_(list(only_from)))
        async with self.sessions() as session:
            result = await session.execute(query.values(**fields))
            await session.commit()
        return bool(getattr(result, "rowcount", 0))

    async def take_run_task(self, run_id: str, task_id: str) -> bool:
        """Record ``task_id`` as the task driving the run, unless another is recorded
        (False)."""
        query = (
            update(AgentRunRow)
            .where(
                AgentRunRow.id == run_id,
                or_(AgentRunRow.task_id.is_(None), AgentRunRow.task_id == task_id),
            )
            .values(task_id=task_id)
        )
        async with self.sessions() as session:
            result = await session.execute(query)
            await session.commit()
        return bool(getattr(result, "rowcount", 0))

    async def tokens_since(self, tenant_id: str, since: datetime, agent_id: str | None) -> int:
        """Model tokens the tenant's runs (the agent's, when given) created since used."""
        query = select(func.coalesce(func.sum(AgentRunRow.tokens_in + AgentRunRow.tokens_out), 0))
        query = query.where(AgentRunRow.tenant_id == tenant_id, AgentRunRow.created_at >= since)
        if agent_id is not None:
            query = query.where(AgentRunRow.agent_id == agent_id)
        async with self.sessions() as session:
            return int((await session.execute(query)).scalar_one())

    async def runs_waiting_since(self, status: str, cutoff: datetime) -> Sequence[AgentRunRow]:
        """Runs of every tenant in ``status`` since before ``cutoff`` (queued: created
        then; waiting for approval: not changed since)."""
        query = select(AgentRunRow).where(AgentRunRow.status == status)
        if status == "queued":
            query = query.where(AgentRunRow.created_at < cutoff)
        else:
            latest = (
                select(func.max(AgentRunStepRow.started_at))
                .where(AgentRunStepRow.run_id == AgentRunRow.id)
                .scalar_subquery()
            )
            query = query.where(func.coalesce(latest, AgentRunRow.created_at) < cutoff)
        async with self.sessions() as session:
            return (await session.scalars(query.limit(1000))).all()

    async def queued_unstarted(self, thread_id: str) -> AgentRunRow | None:
        """The oldest run of the thread waiting its turn (queued with no task yet)."""
        query = (
            select(AgentRunRow)
            .where(
                AgentRunRow.thread_id == thread_id,
                AgentRunRow.status == "queued",
                AgentRunRow.task_id.is_(None),
            )
            .order_by(AgentRunRow.created_at, AgentRunRow.id)
            .limit(1)
        )
        async with self.sessions() as session:
            return (await session.scalars(query)).first()

    # -- steps --

    async def steps(self, run_id: str) -> Sequence[AgentRunStepRow]:
        query = select(AgentRunStepRow).where(AgentRunStepRow.run_id == run_id)
        async with self.sessions() as session:
            return (await session.scalars(query.order_by(AgentRunStepRow.seq))).all()

    async def add_step(
        self,
        row: AgentRunStepRow,
        *,
        usage: Usage | None = None,
        events: Sequence[tuple[str, StepEvent]] = (),
    ) -> tuple[AgentRunStepRow, bool]:
        """Add the step as the run's next (``seq`` is set here), and in the same
        transaction add ``usage`` to the run and append ``events`` (each made from the
        step as added) to its stream. A step with the same key already there is
        returned instead (False: nothing written)."""
        for _ in range(5):
            async with self.sessions() as session:
                existing = (
                    await session.scalars(
                        select(AgentRunStepRow).where(AgentRunStepRow.key == row.key)
                    )
                ).first()
                if existing is not None:
                    return existing, False
                last = await session.scalar(
                    select(func.max(AgentRunStepRow.seq)).where(
                        AgentRunStepRow.run_id == row.run_id
                    )
                )
                row.seq = (last or 0) + 1
                session.add(row)
                if usage is not None:
                    await session.execute(_usage_update(row.run_id, usage))
                await _append_events(
                    session, row.tenant_id, row.run_id, [(t, make(row)) for t, make in events]
                )
                try:
                    await session.commit()
                except IntegrityError:  # a concurrent writer took a number or the key
                    await session.rollback()
                    continue
                return row, True
        raise ConflictError("the run changed meanwhile: try again")

    async def finish_step(
        self,
        row: AgentRunStepRow,
        fields: dict[str, Any],
        *,
        only_from: Collection[str],
        event: tuple[str, StepEvent] | None = None,
    ) -> bool:
        """Set the step's ``fields`` while its status is one of ``only_from`` (also on
        ``row``), appending ``event`` (made from the changed step) in the same
        transaction. False: its status was another, nothing written."""
        query = (
            update(AgentRunStepRow)
            .where(
                AgentRunStepRow.run_id == row.run_id,
                AgentRunStepRow.seq == row.seq,
                AgentRunStepRow.status.in_(list(only_from)),
            )
            .values(**fields)
        )
        for _ in range(5):
            async with self.sessions() as session:
                result = await session.execute(query)
                if not getattr(result, "rowcount", 0):
                    await session.rollback()
                    return False
                for name, value in fields.items():
                    setattr(row, name, value)
                if event is not None:
                    made = [(event[0], event[1](row))]
                    await _append_events(session, row.tenant_id, row.run_id, made)
                try:
                    await session.commit()
                except IntegrityError:  # a concurrent event took the number
                    await session.rollback()
                    continue
                return True
        raise ConflictError("the run's stream is too busy: try again")

    async def step(self, run_id: str, seq: int) -> AgentRunStepRow | None:
        async with self.sessions() as session:
            return await session.get(AgentRunStepRow, (run_id, seq))

    async def set_step(
        self, run_id: str, seq: int, *, only_from: Collection[str] | None = None, **fields: Any
    ) -> bool:
        query = update(AgentRunStepRow).where(
            AgentRunStepRow.run_id == run_id, AgentRunStepRow.seq == seq
        )
        if only_from is not None:
            query = query.where(AgentRunStepRow.status.in_(list(only_from)))
        async with self.sessions() as session:
            result = await session.execute(query.values(**fields))
            await session.commit()
        return bool(getattr(result, "rowcount", 0))

    async def link_enforcements(
        self, ids: Sequence[int], run_id: str, seq: int, audit_event_id: int | None
    ) -> None:
        """Tie policy decisions to the run's step and its audit event."""
        if not ids:
            return
        query = (
            update(PolicyEnforcementRow)
            .where(PolicyEnforcementRow.id.in_(list(ids)))
            .values(run_id=run_id, step=seq, audit_event_id=audit_event_id)
        )
        async with self.sessions() as session:
            await session.execute(query)
            await session.commit()

    # -- events --

    async def add_run_event(
        self, tenant_id: str, run_id: str, type_: str, data: dict[str, Any]
    ) -> int:
        """Append an event to the run's stream; its sequence number."""
        for _ in range(10):
            async with self.sessions() as session:
                [seq] = await _append_events(session, tenant_id, run_id, [(type_, data)])
                try:
                    await session.commit()
                except IntegrityError:
                    await session.rollback()
                    continue
                return seq
        raise ConflictError("the run's stream is too busy: try again")

    async def run_events(
        self, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> Sequence[AgentRunEventRow]:
        query = (
            select(AgentRunEventRow)
            .where(AgentRunEventRow.run_id == run_id, AgentRunEventRow.seq > after)
            .order_by(AgentRunEventRow.seq)
            .limit(limit)
        )
        async with self.sessions() as session:
            return (await session.scalars(query)).all()

    # -- files --

    async def add_run_files(self, rows: Sequence[AgentRunFileRow]) -> None:
        """Keep the files (a step's again, e.g. a retried report, replaces them)."""
        async with self.sessions() as session:
            for row in rows:
                await session.merge(row)
            await session.commit()

    async def run_files(self, run_id: str) -> Sequence[AgentRunFileRow]:
        query = select(AgentRunFileRow).where(AgentRunFileRow.run_id == run_id)
        async with self.sessions() as session:
            rows = await session.scalars(query.order_by(AgentRunFileRow.step, AgentRunFileRow.name))
            return rows.all()

    async def run_file(self, run_id: str, step: int, name: str) -> AgentRunFileRow | None:
        async with self.sessions() as session:
            return await session.get(AgentRunFileRow, (run_id, step, name))

"""The task queue in the records database (the default backend): the ``tasks`` table.

Every transition is one conditional UPDATE whose WHERE clause re-checks the state
it expects (``state = 'active' AND claimed_by = :worker`` and so on), so two
callers racing on one task cannot both win, on SQLite or on PostgreSQL, whatever
the isolation level. Claims differ by dialect:

- PostgreSQL: ``SELECT id ... FOR UPDATE SKIP LOCKED`` then UPDATE in one
  transaction, so concurrent claimers pass over each other's rows instead of
  queueing behind them.
- SQLite (one writer at a time): a single ``UPDATE ... WHERE id = (SELECT id ...
  ORDER BY priority DESC, seq ASC LIMIT 1) AND <still ready>``; if it changed
  nothing while a ready task exists, it lost a race and tries again.

Reads and writes are never mixed in one SQLite transaction: a read that later
wants the write lock can deadlock with another writer (SQLite then fails at once
instead of waiting), so a read that decides a write (``fail``) is followed by a
guarded UPDATE in a transaction of its own.

Every change also inserts its ``task_events`` row (the queue's event log) in the
transaction of the change. The row comes from the changed row the UPDATE
returns and the state the change was guarded on (a claim's, which the guard
does not name, is read off the claimed row: ``claimed_from``).
"""

from __future__ import annotations

import builtins
import threading
import time
import uuid
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aether.errors import BadRequestError, ConflictError, NotFoundError
from aether.model.tasks import TaskEvent, TaskOut, TaskState
from aether.store.records.schema import Task, TaskEventRow
from aether.tasks.queue.base import (
    LEASE_EXPIRED,
    Backoff,
    BackoffFn,
    NewTask,
    claimed_from,
    conflict_message,
    event_error,
    event_node,
    now_or,
    utc,
    validate,
)

__all__ = ["SqlTaskQueue", "next_seq"]

_CANCELLABLE = (TaskState.PENDING, TaskState.SCHEDULED, TaskState.RETRY, TaskState.ACTIVE)

_seq_lock = threading.Lock()
_last_seq = 0


def next_seq() -> int:
    """A strictly increasing submission number: microseconds since the epoch, bumped on ties.

    Within a process it follows submission order exactly; across servers sharing
    one PostgreSQL it follows their clocks, which is as FIFO as distributed
    submitters can be without a shared counter (and needs no extra round trip).
    """
    global _last_seq
    with _seq_lock:
        _last_seq = max(time.time_ns() // 1000, _last_seq + 1)
        return _last_seq


def _out(row: Task) -> TaskOut:
    return TaskOut.model_validate(row, from_attributes=True)


def _logged(row: Task, previous: TaskState | None, ts: float) -> TaskEventRow:
    """The event-log row of the change that left the task as ``row``."""
    state = TaskState(row.state)
    return TaskEventRow(
        task_id=row.id,
        tenant_id=row.tenant_id,
        task_type=row.type,
        state=state,
        previous=previous,
        queue=row.queue,
        priority=row.priority,
        attempt=row.attempts,
        node=event_node(state, previous, row.claimed_by),
        error=event_error(state, row.error),
        ts=ts,
    )


def _event_out(row: TaskEventRow) -> TaskEvent:
    return TaskEvent(
        position=row.id,
        task_id=row.task_id,
        tenant_id=row.tenant_id,
        task_type=row.task_type,
        state=TaskState(row.state),
        previous=None if row.previous is None else TaskState(row.previous),
        queue=row.queue,
        priority=row.priority,
        attempt=row.attempt,
        node=row.node,
        error=row.error,
        ts=row.ts,
    )


def _ready(now: float) -> ColumnElement[bool]:
    return or_(
        Task.state == TaskState.PENDING,
        and_(Task.state.in_((TaskState.SCHEDULED, TaskState.RETRY)), Task.run_at <= utc(now)),
    )


class SqlTaskQueue:
    """``TaskQueue`` on the records database; the caller owns (and disposes) the engine.

    Tenants must exist in ``tenants`` (the table's foreign key; PostgreSQL enforces it).
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        backoff: BackoffFn | None = None,
        claim_attempts: int = 50,
    ) -> None:
        self.sessions = sessions
        self.backoff: BackoffFn = backoff if backoff is not None else Backoff()
        self.claim_attempts = claim_attempts

    # -- submit and read -----------------------------------------------------

    async def submit(self, tenant_id: str, spec: NewTask, *, now: float | None = None) -> TaskOut:
        validate(spec)
        now = now_or(now)
        key = spec.idempotency_key
        if key is not None:
            existing = await self._by_key(tenant_id, key)
            if existing is not None:
                return existing
        run_at = now if spec.run_at is None else spec.run_at
        row = Task(
            id=uuid.uuid4().hex,
            seq=next_seq(),
            tenant_id=tenant_id,
            type=spec.type,
            payload=dict(spec.payload),
            queue=spec.queue,
            priority=spec.priority,
            max_retry=spec.max_retry,
            timeout=float(spec.timeout),
            run_at=utc(run_at),
            idempotency_key=key,
            state=TaskState.PENDING if run_at <= now else TaskState.SCHEDULED,
            attempts=0,
            node=spec.node,
            driver=spec.driver,
            created_at=utc(now),
            updated_at=utc(now),
        )
        out = _out(row)
        async with self.sessions() as session:
            session.add(row)
            session.add(_logged(row, None, now))
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                # A concurrent submit with the same key won; anything else is a real error.
                existing = await self._by_key(tenant_id, key) if key is not None else None
                if existing is None:
                    raise
                return existing
        return out

    async def _by_key(self, tenant_id: str, key: str) -> TaskOut | None:
        async with self.sessions() as session:
            row = await session.scalar(
                select(Task).where(Task.tenant_id == tenant_id, Task.idempotency_key == key)
            )
            return None if row is None else _out(row)

    async def _find(self, task_id: str, tenant_id: str | None = None) -> TaskOut | None:
        async with self.sessions() as session:
            query = select(Task).where(Task.id == task_id)
            if tenant_id is not None:
                query = query.where(Task.tenant_id == tenant_id)
            row = await session.scalar(query)
            return None if row is None else _out(row)

    async def get(self, task_id: str, tenant_id: str | None = None) -> TaskOut:
        found = await self._find(task_id, tenant_id)
        if found is None:
            raise NotFoundError(f"task {task_id} not found")
        return found

    async def list(
        self,
        tenant_id: str,
        *,
        state: TaskState | None = None,
        type: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> builtins.list[TaskOut]:
        if limit < 1:
            raise BadRequestError("limit must be at least 1")
        async with self.sessions() as session:
            query = select(Task).where(Task.tenant_id == tenant_id)
            if before is not None:
                seq = await session.scalar(
                    select(Task.seq).where(Task.id == before, Task.tenant_id == tenant_id)
                )
                if seq is None:
                    raise NotFoundError(f"task {before} not found")
                query = query.where(Task.seq < seq)
            if state is not None:
                query = query.where(Task.state == state)
            if type is not None:
                query = query.where(Task.type == type)
            if queue is not None:
                query = query.where(Task.queue == queue)
            rows = await session.scalars(query.order_by(Task.seq.desc()).limit(limit))
            return [_out(row) for row in rows]

    # -- claims --------------------------------------------------------------

    async def claim(
        self,
        worker: str,
        *,
        node: str,
        drivers: Collection[str],
        queues: Sequence[str],
        lease: float,
        now: float | None = None,
    ) -> TaskOut | None:
        if not queues:
            return None
        now = now_or(now)
        eligible = [
            _ready(now),
            Task.queue.in_(list(queues)),
            or_(Task.node.is_(None), Task.node == node),
            or_(Task.driver.is_(None), Task.driver.in_(list(drivers))),
        ]
        values: dict[str, Any] = {
            "state": TaskState.ACTIVE,
            "attempts": Task.attempts + 1,
            "claimed_by": worker,
            "lease_expires_at": utc(now + lease),
            "started_at": utc(now),
            "updated_at": utc(now),
        }
        pick = (
            select(Task.id).where(*eligible).order_by(Task.priority.desc(), Task.seq.asc()).limit(1)
        )
        for _ in range(self.claim_attempts):
            async with self.sessions() as session:
                if session.get_bind().dialect.name == "postgresql":
                    task_id = await session.scalar(pick.with_for_update(skip_locked=True))
                    if task_id is None:
                        return None
                    target: ColumnElement[bool] = Task.id == task_id
                else:
                    target = Task.id == pick.scalar_subquery()
                row = await session.scalar(
                    update(Task)
                    .where(target, _ready(now))
                    .values(values)
                    .returning(Task)
                    .execution_options(synchronize_session=False)
                )
                claimed = None
                if row is not None:
                    claimed = _out(row)
                    session.add(_logged(row, claimed_from(claimed), now))
                await session.commit()
            if claimed is not None:
                return claimed
            async with self.sessions() as session:  # none left, or lost a race?
                if await session.scalar(select(Task.id).where(*eligible).limit(1)) is None:
                    return None
        return None  # a ready task kept slipping away; the caller polls again anyway

    async def heartbeat(
        self, task_id: str, worker: str, lease: float, *, now: float | None = None
    ) -> bool:
        now = now_or(now)
        async with self.sessions() as session:
            held = await session.scalar(
                update(Task)
                .where(*self._held(task_id, worker))
                .values(lease_expires_at=utc(now + lease), updated_at=utc(now))
                .returning(Task.id)
            )
            await session.commit()
        return held is not None

    @staticmethod
    def _held(task_id: str, worker: str) -> tuple[ColumnElement[bool], ...]:
        return (Task.id == task_id, Task.state == TaskState.ACTIVE, Task.claimed_by == worker)

    async def _refuse(self, task_id: str, worker: str) -> ConflictError | NotFoundError:
        """Why ``worker`` may not finish the task (read after a guarded UPDATE matched nothing)."""
        found = await self._find(task_id)
        if found is None:
            return NotFoundError(f"task {task_id} not found")
        return ConflictError(conflict_message(found, worker))

    async def _update(
        self,
        where: Sequence[ColumnElement[bool]],
        previous: TaskState,
        now: float,
        **values: Any,
    ) -> TaskOut | None:
        """A guarded change from ``previous`` and its event, in one transaction."""
        async with self.sessions() as session:
            row = await session.scalar(
                update(Task)
                .where(*where)
                .values(values)
                .returning(Task)
                .execution_options(synchronize_session=False)
            )
            out = None if row is None else _out(row)
            if row is not None:
                session.add(_logged(row, previous, now))
            await session.commit()
        return out

    async def complete(
        self, task_id: str, worker: str, result: dict[str, Any], *, now: float | None = None
    ) -> TaskOut:
        now = now_or(now)
        stamp = utc(now)
        done = await self._update(
            self._held(task_id, worker),
            TaskState.ACTIVE,
            now,
            state=TaskState.SUCCEEDED,
            result=result,
            error=None,
            lease_expires_at=None,
            finished_at=stamp,
            updated_at=stamp,
        )
        if done is None:
            raise await self._refuse(task_id, worker)
        return done

    async def fail(
        self,
        task_id: str,
        worker: str,
        error: str,
        *,
        retryable: bool = True,
        now: float | None = None,
    ) -> TaskOut:
        now = now_or(now)
        for _ in range(3):
            current = await self._find(task_id)
            if current is None:
                raise NotFoundError(f"task {task_id} not found")
            if current.state != TaskState.ACTIVE or current.claimed_by != worker:
                raise ConflictError(conflict_message(current, worker))
            values: dict[str, Any] = {
                "error": error,
                "lease_expires_at": None,
                "updated_at": utc(now),
            }
            if retryable and current.attempts <= current.max_retry:
                values["state"] = TaskState.RETRY
                values["run_at"] = utc(now + self.backoff(current.attempts))
            else:
                values["state"] = TaskState.DEAD if retryable else TaskState.FAILED
                values["finished_at"] = utc(now)
            done = await self._update(
                [*self._held(task_id, worker), Task.attempts == current.attempts],
                TaskState.ACTIVE,
                now,
                **values,
            )
            if done is not None:
                return done
        raise await self._refuse(task_id, worker)

    async def cancel(self, task_id: str, tenant_id: str, *, now: float | None = None) -> TaskOut:
        now = now_or(now)
        stamp = utc(now)
        # read, then change guarded on the state read (its event's ``previous``)
        for _ in range(5):
            current = await self.get(task_id, tenant_id)
            if current.state == TaskState.CANCELLED:
                return current
            if current.state not in _CANCELLABLE:
                break
            done = await self._update(
                [Task.id == task_id, Task.tenant_id == tenant_id, Task.state == current.state],
                current.state,
                now,
                state=TaskState.CANCELLED,
                lease_expires_at=None,
                finished_at=stamp,
                updated_at=stamp,
            )
            if done is not None:
                return done
        current = await self.get(task_id, tenant_id)
        if current.state == TaskState.CANCELLED:
            return current
        if current.state in _CANCELLABLE:
            raise ConflictError(f"task {task_id} kept changing while being cancelled; try again")
        raise ConflictError(f"task {task_id} already {current.state}; it cannot be cancelled")

    async def expire(self, now: float | None = None) -> int:
        now = now_or(now)
        lapsed = [Task.state == TaskState.ACTIVE, Task.lease_expires_at <= utc(now)]
        common = {"lease_expires_at": None, "error": LEASE_EXPIRED, "updated_at": utc(now)}
        async with self.sessions() as session:
            dead = await session.scalars(
                update(Task)
                .where(*lapsed, Task.attempts > Task.max_retry)
                .values(state=TaskState.DEAD, finished_at=utc(now), **common)
                .returning(Task)
                .execution_options(synchronize_session=False)
            )
            taken = list(dead.all())
            retried = await session.scalars(
                update(Task)
                .where(*lapsed)
                .values(state=TaskState.RETRY, run_at=utc(now), **common)
                .returning(Task)
                .execution_options(synchronize_session=False)
            )
            taken += retried.all()
            session.add_all(_logged(row, TaskState.ACTIVE, now) for row in taken)
            await session.commit()
        return len(taken)

    async def stats(
        self, tenant_id: str | None = None, *, since: float | None = None
    ) -> dict[TaskState, int]:
        counts = dict.fromkeys(TaskState, 0)
        async with self.sessions() as session:
            query = select(Task.state, func.count()).group_by(Task.state)
            if tenant_id is not None:
                query = query.where(Task.tenant_id == tenant_id)
            if since is not None:
                final = [s.value for s in TaskState if s.final]
                query = query.where(Task.state.not_in(final) | (Task.finished_at >= utc(since)))
            for state, count in await session.execute(query):
                counts[TaskState(state)] = count
        return counts

    # -- the event log -------------------------------------------------------

    async def events_after(self, position: int, limit: int) -> builtins.list[TaskEvent]:
        query = (
            select(TaskEventRow)
            .where(TaskEventRow.id > position)
            .order_by(TaskEventRow.id)
            .limit(limit)
        )
        async with self.sessions() as session:
            return [_event_out(row) for row in await session.scalars(query)]

    async def history(self, task_id: str) -> builtins.list[TaskEvent]:
        query = (
            select(TaskEventRow).where(TaskEventRow.task_id == task_id).order_by(TaskEventRow.id)
        )
        async with self.sessions() as session:
            return [_event_out(row) for row in await session.scalars(query)]

    async def events_head(self) -> int:
        async with self.sessions() as session:
            return int(await session.scalar(select(func.max(TaskEventRow.id))) or 0)

    async def trim_events(self, keep: int) -> int:
        """Delete the rows more than ``keep`` positions behind the newest (ids may skip
        a number, so sometimes fewer than ``keep`` rows stay: never one a resume within
        ``keep`` positions needs)."""
        cut = await self.events_head() - keep
        if cut <= 0:
            return 0
        async with self.sessions() as session:
            result = await session.execute(delete(TaskEventRow).where(TaskEventRow.id <= cut))
            await session.commit()
        return int(getattr(result, "rowcount", 0) or 0)

    async def close(self) -> None:
        """Nothing to release: the engine belongs to whoever opened the records database."""

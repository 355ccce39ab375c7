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

Claims read ``ix_tasks_ready``, an index over ready tasks only, so a claim costs
the same however many finished tasks the table keeps; ``expire`` reads
``ix_tasks_active``. The hot paths (submit, claim, complete, heartbeat, get) are
Core statements on the engine: rows become ``TaskOut`` directly, with no ORM
objects or sessions in between. The batch methods change many tasks in one
transaction.

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
from collections.abc import Collection, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from aether.errors import AetherError, BadRequestError, ConflictError, NotFoundError
from aether.model.tasks import TaskEvent, TaskOut, TaskState
from aether.store.records.schema import TASKS_READY, Task, TaskEventRow
from aether.tasks.queue.base import (
    LEASE_EXPIRED,
    Backoff,
    BackoffFn,
    Completion,
    NewTask,
    ReadyLag,
    claimed_from,
    conflict_message,
    epoch,
    event_error,
    event_node,
    now_or,
    utc,
    validate,
)

__all__ = ["SqlTaskQueue", "next_seq"]

_CANCELLABLE = (TaskState.PENDING, TaskState.SCHEDULED, TaskState.RETRY, TaskState.ACTIVE)
T = cast(Table, Task.__table__)
E = cast(Table, TaskEventRow.__table__)
_KEY_RETRIES = 5  # a batch that lost an idempotency-key race reads the keys again

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


def _out(row: Mapping[Any, Any]) -> TaskOut:
    return TaskOut.model_validate(dict(row))


def _event(row: Mapping[Any, Any], previous: TaskState | None, ts: float) -> dict[str, Any]:
    """The event-log row of the change that left the task as ``row``."""
    state = TaskState(row["state"])
    return {
        "task_id": row["id"],
        "tenant_id": row["tenant_id"],
        "task_type": row["type"],
        "state": state,
        "previous": previous,
        "queue": row["queue"],
        "priority": row["priority"],
        "attempt": row["attempts"],
        "node": event_node(state, previous, row["claimed_by"]),
        "error": event_error(state, row["error"]),
        "ts": ts,
    }


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
    """Ready to claim; its first term is ``ix_tasks_ready``'s condition, word for word,
    so that SQLite and PostgreSQL read that index and never a finished task."""
    return and_(
        text(TASKS_READY),
        or_(T.c.state == TaskState.PENDING, T.c.run_at <= utc(now)),
    )


def _new_row(tenant_id: str, spec: NewTask, now: float) -> dict[str, Any]:
    run_at = now if spec.run_at is None else spec.run_at
    stamp = utc(now)
    return {
        "id": uuid.uuid4().hex,
        "seq": next_seq(),
        "tenant_id": tenant_id,
        "type": spec.type,
        "payload": dict(spec.payload),
        "queue": spec.queue,
        "priority": spec.priority,
        "max_retry": spec.max_retry,
        "timeout": float(spec.timeout),
        "run_at": utc(run_at),
        "idempotency_key": spec.idempotency_key,
        "state": TaskState.PENDING if run_at <= now else TaskState.SCHEDULED,
        "attempts": 0,
        "result": None,
        "error": None,
        "node": spec.node,
        "driver": spec.driver,
        "traceparent": spec.traceparent,
        "claimed_by": None,
        "lease_expires_at": None,
        "created_at": stamp,
        "updated_at": stamp,
        "started_at": None,
        "finished_at": None,
    }


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
        engine = sessions.kw.get("bind")
        if not isinstance(engine, AsyncEngine):
            raise TypeError("the session factory must be bound to an AsyncEngine")
        self.engine = engine
        self.backoff: BackoffFn = backoff if backoff is not None else Backoff()
        self.claim_attempts = claim_attempts

    # -- submit and read -----------------------------------------------------

    async def submit(self, tenant_id: str, spec: NewTask, *, now: float | None = None) -> TaskOut:
        return (await self.submit_many(tenant_id, [spec], now=now))[0]

    async def submit_many(
        self, tenant_id: str, specs: Sequence[NewTask], *, now: float | None = None
    ) -> builtins.list[TaskOut]:
        for spec in specs:
            validate(spec)
        now = now_or(now)
        keys = {s.idempotency_key for s in specs if s.idempotency_key is not None}
        for _ in range(_KEY_RETRIES):
            known = await self._by_keys(tenant_id, keys)
            answers: builtins.list[TaskOut | dict[str, Any]] = []
            rows: builtins.list[dict[str, Any]] = []
            for spec in specs:
                key = spec.idempotency_key
                if key is not None and key in known:
                    answers.append(known[key])
                    continue
                row = _new_row(tenant_id, spec, now)
                if key is not None:
                    known[key] = _out(row)  # a repeat within the batch gets this one
                rows.append(row)
                answers.append(row)
            if rows:
                try:
                    async with self.engine.begin() as conn:
                        await conn.execute(insert(T), rows)
                        await conn.execute(insert(E), [_event(r, None, now) for r in rows])
                except IntegrityError:
                    if not keys:
                        raise
                    continue  # a concurrent submit took one of the keys: read them again
            return [a if isinstance(a, TaskOut) else _out(a) for a in answers]
        raise ConflictError("concurrent submissions kept taking this batch's idempotency keys")

    async def _by_keys(self, tenant_id: str, keys: Collection[str]) -> dict[str, TaskOut]:
        if not keys:
            return {}
        query = select(T).where(T.c.tenant_id == tenant_id, T.c.idempotency_key.in_(list(keys)))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return {row["idempotency_key"]: _out(row) for row in rows}

    async def get_many(self, task_ids: Collection[str]) -> dict[str, TaskOut]:
        if not task_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(T).where(T.c.id.in_(list(task_ids))))).mappings()
            return {row["id"]: _out(row) for row in rows.all()}

    async def _find(self, task_id: str, tenant_id: str | None = None) -> TaskOut | None:
        query = select(T).where(T.c.id == task_id)
        if tenant_id is not None:
            query = query.where(T.c.tenant_id == tenant_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
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
        query = select(T).where(T.c.tenant_id == tenant_id)
        async with self.engine.connect() as conn:
            if before is not None:
                seq = await conn.scalar(
                    select(T.c.seq).where(T.c.id == before, T.c.tenant_id == tenant_id)
                )
                if seq is None:
                    raise NotFoundError(f"task {before} not found")
                query = query.where(T.c.seq < seq)
            if state is not None:
                query = query.where(T.c.state == state)
            if type is not None:
                query = query.where(T.c.type == type)
            if queue is not None:
                query = query.where(T.c.queue == queue)
            rows = await conn.execute(query.order_by(T.c.seq.desc()).limit(limit))
            return [_out(row) for row in rows.mappings().all()]

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
        claimed = await self.claim_many(
            worker, node=node, drivers=drivers, queues=queues, lease=lease, limit=1, now=now
        )
        return claimed[0] if claimed else None

    async def claim_many(
        self,
        worker: str,
        *,
        node: str,
        drivers: Collection[str],
        queues: Sequence[str],
        lease: float,
        limit: int,
        now: float | None = None,
    ) -> builtins.list[TaskOut]:
        if not queues or limit < 1:
            return []
        now = now_or(now)
        eligible = [
            _ready(now),
            T.c.queue.in_(builtins.list(queues)),
            or_(T.c.node.is_(None), T.c.node == node),
            or_(T.c.driver.is_(None), T.c.driver.in_(builtins.list(drivers))),
        ]
        values: dict[str, Any] = {
            "state": TaskState.ACTIVE,
            "attempts": T.c.attempts + 1,
            "claimed_by": worker,
            "lease_expires_at": utc(now + lease),
            "started_at": utc(now),
            "updated_at": utc(now),
        }
        pick = (
            select(T.c.id)
            .where(*eligible)
            .order_by(T.c.priority.desc(), T.c.seq.asc())
            .limit(limit)
        )
        for _ in range(self.claim_attempts):
            async with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    ids = (await conn.scalars(pick.with_for_update(skip_locked=True))).all()
                    if not ids:
                        return []
                    target: ColumnElement[bool] = T.c.id.in_(ids)
                else:
                    target = T.c.id.in_(pick.scalar_subquery())
                rows = (
                    (
                        await conn.execute(
                            update(T).where(target, _ready(now)).values(values).returning(T)
                        )
                    )
                    .mappings()
                    .all()
                )
                # RETURNING's order is not defined (PostgreSQL): events in claim order
                ordered = sorted(rows, key=lambda r: (-r["priority"], r["seq"]))
                pairs = [(_out(row), row) for row in ordered]
                claimed = [task for task, _ in pairs]
                if rows:
                    await conn.execute(
                        insert(E), [_event(row, claimed_from(task), now) for task, row in pairs]
                    )
            if claimed:
                return claimed
            async with self.engine.connect() as conn:  # none left, or lost a race?
                if await conn.scalar(select(T.c.id).where(*eligible).limit(1)) is None:
                    return []
        return []  # a ready task kept slipping away; the caller polls again anyway

    async def heartbeat(
        self, task_id: str, worker: str, lease: float, *, now: float | None = None
    ) -> bool:
        now = now_or(now)
        async with self.engine.begin() as conn:
            held = await conn.scalar(
                update(T)
                .where(*self._held(task_id, worker))
                .values(lease_expires_at=utc(now + lease), updated_at=utc(now))
                .returning(T.c.id)
            )
        return held is not None

    @staticmethod
    def _held(task_id: str, worker: str) -> tuple[ColumnElement[bool], ...]:
        return (T.c.id == task_id, T.c.state == TaskState.ACTIVE, T.c.claimed_by == worker)

    async def _refuse(self, task_id: str, worker: str) -> ConflictError | NotFoundError:
        """Why ``worker`` may not finish the task (read after a guarded UPDATE matched nothing)."""
        found = await self._find(task_id)
        if found is None:
            return NotFoundError(f"task {task_id} not found")
        return ConflictError(conflict_message(found, worker))

    @staticmethod
    async def _change(
        conn: AsyncConnection,
        where: Sequence[ColumnElement[bool]],
        previous: TaskState,
        now: float,
        values: Mapping[Any, Any],
    ) -> RowMapping | None:
        """A guarded change from ``previous`` and its event, in ``conn``'s transaction."""
        row: RowMapping | None = (
            (await conn.execute(update(T).where(*where).values(dict(values)).returning(T)))
            .mappings()
            .first()
        )
        if row is not None:
            await conn.execute(insert(E), [_event(row, previous, now)])
        return row

    async def _update(
        self,
        where: Sequence[ColumnElement[bool]],
        previous: TaskState,
        now: float,
        **values: Any,
    ) -> TaskOut | None:
        """A guarded change from ``previous`` and its event, in one transaction."""
        async with self.engine.begin() as conn:
            row = await self._change(conn, where, previous, now, values)
        return None if row is None else _out(row)

    async def complete(
        self, task_id: str, worker: str, result: dict[str, Any], *, now: float | None = None
    ) -> TaskOut:
        (answer,) = await self.complete_many(worker, [Completion(task_id, result)], now=now)
        if isinstance(answer, AetherError):
            raise answer
        return answer

    async def complete_many(
        self, worker: str, results: Sequence[Completion], *, now: float | None = None
    ) -> builtins.list[TaskOut | AetherError]:
        now = now_or(now)
        stamp = utc(now)
        values = {
            "state": TaskState.SUCCEEDED,
            "error": None,
            "lease_expires_at": None,
            "finished_at": stamp,
            "updated_at": stamp,
        }
        done: dict[int, TaskOut] = {}
        async with self.engine.begin() as conn:
            for i, c in enumerate(results):
                where = [*self._held(c.task_id, worker)]
                if c.attempt is not None:
                    where.append(T.c.attempts == c.attempt)
                row = await self._change(
                    conn, where, TaskState.ACTIVE, now, {**values, "result": c.result}
                )
                if row is not None:
                    done[i] = _out(row)
        refused = {c.task_id for i, c in enumerate(results) if i not in done}
        current = await self.get_many(refused)
        answers: builtins.list[TaskOut | AetherError] = []
        for i, c in enumerate(results):
            if i in done:
                answers.append(done[i])
            elif (found := current.get(c.task_id)) is None:
                answers.append(NotFoundError(f"task {c.task_id} not found"))
            else:
                answers.append(ConflictError(conflict_message(found, worker, c.attempt)))
        return answers

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
                [*self._held(task_id, worker), T.c.attempts == current.attempts],
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
                [T.c.id == task_id, T.c.tenant_id == tenant_id, T.c.state == current.state],
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
        lapsed = [T.c.state == TaskState.ACTIVE, T.c.lease_expires_at <= utc(now)]
        common = {"lease_expires_at": None, "error": LEASE_EXPIRED, "updated_at": utc(now)}
        async with self.engine.begin() as conn:
            dead = await conn.execute(
                update(T)
                .where(*lapsed, T.c.attempts > T.c.max_retry)
                .values(state=TaskState.DEAD, finished_at=utc(now), **common)
                .returning(T)
            )
            taken = builtins.list(dead.mappings().all())
            retried = await conn.execute(
                update(T)
                .where(*lapsed)
                .values(state=TaskState.RETRY, run_at=utc(now), **common)
                .returning(T)
            )
            taken += retried.mappings().all()
            if taken:
                await conn.execute(insert(E), [_event(r, TaskState.ACTIVE, now) for r in taken])
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

    async def ready_lag(self, now: float | None = None) -> builtins.list[ReadyLag]:
        now = now_or(now)
        query = (
            select(T.c.tenant_id, T.c.queue, func.count(), func.min(T.c.run_at))
            .where(_ready(now))
            .group_by(T.c.tenant_id, T.c.queue)
        )
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        return [
            ReadyLag(tenant_id, queue, int(count), epoch(oldest))
            for tenant_id, queue, count, oldest in rows
        ]

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

"""The task queue contract: a durable priority queue with leases, retries and idempotency.

Every backend (``sql`` in the records database, ``redis``) honours this contract
and one suite (``tests/tasks/test_queue_contract.py``) proves it against each.
Time is always an argument (``now``, seconds since the epoch, default
``time.time()``) so that the contract is testable without sleeping; datetimes in
``TaskOut`` are naive UTC, like every datetime in the records database.
"""

from __future__ import annotations

import builtins
import random
import re
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aether.errors import AetherError, BadRequestError
from aether.model.tasks import TaskEvent, TaskOut, TaskState
from aether.store.records.repo import epoch, utc

__all__ = [
    "EVENT_ERROR_CHARS",
    "LEASE_EXPIRED",
    "READY_STATES",
    "Backoff",
    "BackoffFn",
    "Completion",
    "NewTask",
    "ReadyLag",
    "TaskQueue",
    "backoff_ceiling",
    "backoff_delay",
    "claimed_from",
    "conflict_message",
    "epoch",
    "event_error",
    "event_node",
    "now_or",
    "utc",
    "validate",
]

# States a task can be claimed from (scheduled and retry only once run_at has come).
READY_STATES = (TaskState.PENDING, TaskState.SCHEDULED, TaskState.RETRY)
LEASE_EXPIRED = "the lease of the last attempt expired: its worker stopped heartbeating"
EVENT_ERROR_CHARS = 512  # how much of a failure's error its task event carries
_ERROR_STATES = (TaskState.RETRY, TaskState.FAILED, TaskState.DEAD)
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task to enqueue, with every default already resolved by the task type.

    ``run_at`` is an epoch timestamp (None: now). ``node`` pins the task to one
    node (``vm:execute`` runs where its sandbox is); ``driver`` restricts it to
    nodes that have that sandbox driver. Both None: any node may claim it.
    """

    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    queue: str = "default"
    priority: int = 5
    max_retry: int = 3
    timeout: float = 300.0
    run_at: float | None = None
    idempotency_key: str | None = None
    node: str | None = None
    driver: str | None = None
    traceparent: str | None = None  # the submitting request's span (aether.tracing)


@dataclass(frozen=True, slots=True)
class Completion:
    """A holder's success to record: the task, its result, and (optionally) the attempt
    the holder ran, so a result of an attempt since taken back is refused."""

    task_id: str
    result: dict[str, Any]
    attempt: int | None = None


def validate(spec: NewTask) -> None:
    """Reject a spec no backend could store faithfully (the same limits as ``TaskIn``)."""
    if not 1 <= len(spec.type) <= 64:
        raise BadRequestError("task type must be 1 to 64 characters")
    if not _QUEUE_NAME.match(spec.queue):
        raise BadRequestError(f"invalid queue name {spec.queue!r}")
    if not 0 <= spec.priority <= 100:
        raise BadRequestError("priority must be between 0 and 100")
    if not 0 <= spec.max_retry <= 100:
        raise BadRequestError("max_retry must be between 0 and 100")
    if not 0 < spec.timeout <= 86_400:
        raise BadRequestError("timeout must be more than 0 and at most 86400 seconds")
    if spec.idempotency_key is not None and not 1 <= len(spec.idempotency_key) <= 255:
        raise BadRequestError("idempotency key must be 1 to 255 characters")
    if spec.node is not None and not 1 <= len(spec.node) <= 128:
        raise BadRequestError("node must be 1 to 128 characters")
    if spec.driver is not None and not 1 <= len(spec.driver) <= 32:
        raise BadRequestError("driver must be 1 to 32 characters")


def conflict_message(task: TaskOut, worker: str, attempt: int | None = None) -> str:
    """Why ``worker`` may not complete or fail ``task`` (``attempt``: the attempt it ran,
    when it named one): what its holder needs to know."""
    if task.state == TaskState.CANCELLED:
        return f"task {task.id} was cancelled"
    if task.state.final:
        return f"task {task.id} already {task.state}"
    if task.state == TaskState.ACTIVE and task.claimed_by == worker and attempt is not None:
        return (
            f"task {task.id}: attempt {attempt} of {worker} was taken back; "
            f"attempt {task.attempts} holds it now"
        )
    if task.state == TaskState.ACTIVE:
        return f"task {task.id} is claimed by {task.claimed_by}, not {worker}"
    if task.claimed_by == worker:
        return f"task {task.id} is {task.state}: the claim of {worker} expired and was taken back"
    return f"task {task.id} is {task.state}, not claimed by {worker}"


# -- the event log -------------------------------------------------------------


def event_node(state: TaskState, previous: TaskState | None, claimed_by: str | None) -> str | None:
    """The node whose claim a change starts or ends (a claim, or the end of an ``active``)."""
    return claimed_by if TaskState.ACTIVE in (state, previous) else None


def event_error(state: TaskState, error: str | None) -> str | None:
    """A failure's error, shortened, for ``retry``, ``failed`` and ``dead`` (else None)."""
    if state not in _ERROR_STATES or error is None:
        return None
    return error[:EVENT_ERROR_CHARS]


def claimed_from(task: TaskOut) -> TaskState:
    """The state a just-claimed ``task`` was claimed from, read off the claimed row.

    A second or later attempt comes from ``retry`` (a failure and an expiry both
    lead there); a first one from ``scheduled`` if it was submitted to run later
    (``run_at`` after ``created_at``; only a retry moves ``run_at``), else ``pending``.
    """
    if task.attempts > 1:
        return TaskState.RETRY
    return TaskState.SCHEDULED if task.run_at > task.created_at else TaskState.PENDING


@dataclass(frozen=True, slots=True)
class ReadyLag:
    """One tenant's queue: its ready tasks and how long the oldest has waited to be claimed."""

    tenant_id: str
    queue: str
    ready: int
    oldest_ready_at: float  # when the oldest ready task became ready (its ``run_at``)


# -- backoff -------------------------------------------------------------------

BackoffFn = Callable[[int], float]  # attempts so far -> seconds to wait before the next


def backoff_ceiling(attempts: int, *, base: float = 1.0, cap: float = 300.0) -> float:
    """The largest delay after ``attempts`` failed attempts: base * 2^(attempts-1), capped."""
    exponent = min(max(attempts, 1) - 1, 64)  # 2^64 s is far past any cap
    return float(min(cap, base * 2.0**exponent))


def backoff_delay(attempts: int, u: float, *, base: float = 1.0, cap: float = 300.0) -> float:
    """Full jitter: a point ``u`` in [0, 1) of the way up to the ceiling (pure, for tests)."""
    return u * backoff_ceiling(attempts, base=base, cap=cap)


class Backoff:
    """Exponential backoff with full jitter (base 1 s, cap 5 min); seed it for tests.

    Full jitter spreads the retries of many tasks that failed together (a lost
    node, an outage) instead of sending them back in one wave.
    """

    def __init__(self, *, base: float = 1.0, cap: float = 300.0, seed: int | None = None) -> None:
        self.base = base
        self.cap = cap
        self._random = random.Random(seed)

    def __call__(self, attempts: int) -> float:
        return backoff_delay(attempts, self._random.random(), base=self.base, cap=self.cap)


def now_or(now: float | None) -> float:
    """``now`` if given, else the wall clock (every method takes time as an argument)."""
    return time.time() if now is None else now


# -- the contract ----------------------------------------------------------------


class TaskQueue(Protocol):
    """A durable priority queue of tasks. All methods are safe to call concurrently.

    Guarantees:

    - **Idempotent submission.** ``submit`` with an ``idempotency_key`` already used
      in the same tenant returns the task first submitted with it, unchanged (same
      id, whatever the new spec says). The same key in another tenant is another
      task. Without a key every submit creates a task.
    - **States.** A new task is ``pending``, or ``scheduled`` if its ``run_at`` is
      later than ``now``. A task is *ready* when it is ``pending``, or ``scheduled``
      or ``retry`` with ``run_at <= now``; its state does not change when it
      becomes ready, only when it is claimed.
    - **Claim order and placement.** ``claim`` takes, from the given queues, the
      ready task with the highest priority and, among equal priorities, the one
      submitted first (a retried task keeps its place). It only takes tasks whose
      ``node`` is None or the claimer's node and whose ``driver`` is None or one of
      the claimer's drivers. It marks the task ``active``, adds one to
      ``attempts``, records ``claimed_by``, sets ``started_at`` to ``now`` (the
      start of this attempt) and the lease to ``now + lease``. A task is handed to
      exactly one claimer, however many claim concurrently.
    - **Leases.** The holder of a claim is the worker that claimed it while the
      task stays ``active``. ``heartbeat`` by the holder extends the lease and
      returns True; it returns False once the claim is gone (cancelled, expired
      and re-queued, finished, or claimed by another). The holder can complete a
      task whose lease has passed as long as ``expire`` has not yet taken it back.
    - **Finishing.** ``complete`` (state ``succeeded``, result stored, error
      cleared) and ``fail`` are for the holder only; anyone else gets a
      ``ConflictError`` saying why (cancelled, claimed by another, not active)
      and the task is left unchanged. ``fail`` with ``retryable`` and
      ``attempts <= max_retry`` puts the task in ``retry`` with
      ``run_at = now + backoff(attempts)``; with ``retryable`` and attempts used
      up it is ``dead``; without ``retryable`` it is ``failed``.
    - **At least once, nothing lost.** ``expire`` takes back every ``active`` task
      whose lease has passed (``lease_expires_at <= now``): ready again at once as
      ``retry`` with its attempts kept, or ``dead`` if ``attempts > max_retry``.
      Run it periodically (the leader does): it is how a killed node's claims are
      retried. ``max_retry`` therefore bounds the attempts to ``max_retry + 1``.
    - **Cancellation.** ``cancel`` turns a ``pending``, ``scheduled``, ``retry`` or
      ``active`` task into ``cancelled`` (its holder learns it from ``heartbeat``
      or from the ``ConflictError`` of ``complete``/``fail``); cancelling a
      cancelled task returns it unchanged; a finished one raises ``ConflictError``.
    - **Final states** (``succeeded``, ``failed``, ``dead``, ``cancelled``) never
      change again and set ``finished_at``. ``claimed_by`` keeps the last claimer.
    - **Tenancy.** Tasks belong to the tenant they were submitted in; every read or
      write that takes a ``tenant_id`` sees only that tenant's tasks
      (``NotFoundError`` otherwise). Nodes pass ``tenant_id=None`` to ``get``.
    - **Event log.** Every state change (a submission, claim, completion, failure,
      cancellation, expiry) appends one ``TaskEvent`` in the same transaction as
      the change: a change is never recorded without its event nor an event
      without its change. A heartbeat, and a submit or cancel that changes
      nothing (idempotency key, already cancelled), append none. Positions
      increase; ``events_after(p)`` gives those above ``p``, oldest first;
      ``trim_events(keep)`` drops all but the newest ``keep``.
    - **Errors.** ``NotFoundError`` for an unknown task, ``ConflictError`` for a
      transition the task's state forbids, ``BadRequestError`` for an invalid spec.
    """

    async def submit(self, tenant_id: str, spec: NewTask, *, now: float | None = None) -> TaskOut:
        """Enqueue ``spec`` (or return the task its idempotency key already names)."""
        ...

    async def submit_many(
        self, tenant_id: str, specs: Sequence[NewTask], *, now: float | None = None
    ) -> builtins.list[TaskOut]:
        """``submit`` for each of ``specs`` in one transaction: all stored or none
        (``BadRequestError`` for an invalid spec, nothing stored), answers in order.
        An idempotency key already used returns that task, as ``submit`` does; a key
        repeated within the batch returns the task of its first use."""
        ...

    async def get(self, task_id: str, tenant_id: str | None = None) -> TaskOut:
        """One task; ``tenant_id`` None means any tenant (for nodes). NotFoundError."""
        ...

    async def get_many(self, task_ids: Collection[str]) -> dict[str, TaskOut]:
        """The tasks of ``task_ids`` that exist, by id, whatever their tenant (for nodes)."""
        ...

    async def list(
        self,
        tenant_id: str,
        *,
        state: TaskState | None = None,
        type: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[TaskOut]:
        """The tenant's tasks, newest submission first; ``before`` is the id of the
        last task of the previous page (NotFoundError if it is not the tenant's)."""
        ...

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
        """The next ready task this worker may run, now ``active`` under a lease; or None."""
        ...

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
        """Up to ``limit`` ready tasks, in claim order, each claimed exactly as ``claim``
        would claim it (one event each), in one transaction (or script) where the
        backend has them. Fewer (or none) when fewer are ready; never one twice."""
        ...

    async def heartbeat(
        self, task_id: str, worker: str, lease: float, *, now: float | None = None
    ) -> bool:
        """Extend the holder's lease to ``now + lease``; False if the claim is gone."""
        ...

    async def complete(
        self, task_id: str, worker: str, result: dict[str, Any], *, now: float | None = None
    ) -> TaskOut:
        """Record the holder's success. ConflictError if ``worker`` no longer holds it."""
        ...

    async def complete_many(
        self, worker: str, results: Sequence[Completion], *, now: float | None = None
    ) -> builtins.list[TaskOut | AetherError]:
        """``complete`` for each of ``results`` in one transaction (or script), answers in
        order: the finished task, or the ``ConflictError``/``NotFoundError`` that
        ``complete`` would have raised for it (the task left unchanged). A completion
        naming an ``attempt`` completes the task only while that attempt holds it."""
        ...

    async def fail(
        self,
        task_id: str,
        worker: str,
        error: str,
        *,
        retryable: bool = True,
        now: float | None = None,
    ) -> TaskOut:
        """Record the holder's failure: ``retry`` after a backoff, ``dead`` or ``failed``."""
        ...

    async def cancel(self, task_id: str, tenant_id: str, *, now: float | None = None) -> TaskOut:
        """Cancel a task that has not finished (idempotent for a cancelled one)."""
        ...

    async def expire(self, now: float | None = None) -> int:
        """Take back every claim whose lease has passed; returns how many."""
        ...

    async def stats(
        self, tenant_id: str | None = None, *, since: float | None = None
    ) -> dict[TaskState, int]:
        """How many tasks are in each state (every state present), for one tenant or all.

        With ``since``, a final state counts only the tasks that reached it at or after
        ``since`` (the console's "failed in the last hour"; kept for at least a day);
        the other states count every task in them.
        """
        ...

    async def ready_lag(self, now: float | None = None) -> builtins.list[ReadyLag]:
        """Per tenant and queue with a ready task at ``now``: how many are ready and when
        the oldest of them became ready (the alert rule ``TaskQueueLag``). A backend may
        look at a bounded number of ready tasks per queue (then ``ready`` is a floor)."""
        ...

    async def events_after(self, position: int, limit: int) -> builtins.list[TaskEvent]:
        """Up to ``limit`` recorded state changes with a position above ``position``."""
        ...

    async def events_head(self) -> int:
        """The position of the newest recorded state change (0: none yet)."""
        ...

    async def history(self, task_id: str) -> builtins.list[TaskEvent]:
        """One task's recorded state changes, oldest first (those the trim has kept)."""
        ...

    async def trim_events(self, keep: int) -> int:
        """Drop every recorded state change but the newest ``keep``; returns how many."""
        ...

    async def close(self) -> None:
        """Release the backend's connections (not the records engine, which the caller owns)."""
        ...

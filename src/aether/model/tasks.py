"""Tasks, sandboxes and executions as the API, CLI, server and nodes see them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, Field, model_validator

from aether.model.time import Timestamp
from aether.model.versioned import Versioned

__all__ = [
    "MAX_EXCHANGE",
    "AttemptOut",
    "ClaimIn",
    "ExchangeIn",
    "ExchangeOut",
    "ExecutionOut",
    "ReportIn",
    "ReportOut",
    "SandboxOut",
    "SandboxRecord",
    "SandboxStatus",
    "TaskEvent",
    "TaskHistoryOut",
    "TaskIn",
    "TaskOut",
    "TaskState",
]


class TaskState(enum.StrEnum):
    PENDING = "pending"  # ready to be claimed
    SCHEDULED = "scheduled"  # run_at is in the future
    ACTIVE = "active"  # claimed by a node, under a lease
    RETRY = "retry"  # failed an attempt; waiting for its backoff
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a permanent error: retrying cannot help
    DEAD = "dead"  # every retry failed
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (
            TaskState.SUCCEEDED,
            TaskState.FAILED,
            TaskState.DEAD,
            TaskState.CANCELLED,
        )


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One state change of a task, as the queue's append-only log keeps it.

    ``position`` increases with every change the queue records (resume after it
    with ``events_after``); ``previous`` is None for a submission; ``node`` is the
    node whose claim the change starts or ends (None when no claim is involved);
    ``error`` is set, shortened, for ``retry``, ``failed`` and ``dead``.
    """

    position: int
    task_id: str
    tenant_id: str
    task_type: str
    state: TaskState
    previous: TaskState | None
    queue: str
    priority: int
    attempt: int
    node: str | None
    error: str | None
    ts: float


class SandboxStatus(enum.StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    STOPPED = "stopped"
    DELETED = "deleted"
    FAILED = "failed"


class SandboxRecord(Versioned):
    """Value of ``sandboxes/{node}/{sandbox_id}``: a sandbox running on that node."""

    SCHEMA_NAME: ClassVar[str] = "sandbox"

    id: str
    status: SandboxStatus


class TaskIn(BaseModel):
    """A task to submit; unset fields take the task type's defaults."""

    type: Annotated[str, Field(min_length=1, max_length=64)]
    payload: dict[str, Any] = Field(default_factory=dict)
    queue: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None
    priority: Annotated[int, Field(ge=0, le=100)] | None = None
    max_retry: Annotated[int, Field(ge=0, le=100)] | None = None
    timeout: Annotated[float, Field(gt=0, le=86_400)] | None = None
    run_at: datetime | None = None
    delay: Annotated[float, Field(ge=0, le=30 * 86_400)] | None = None
    idempotency_key: Annotated[str, Field(min_length=1, max_length=255)] | None = None


class TaskOut(Versioned):
    """A task: the user-facing task API's answer, and the node's claim (its
    ``/complete`` and ``/fail`` answers too)."""

    SCHEMA_NAME: ClassVar[str] = "task"

    id: str
    type: str
    payload: dict[str, Any]
    queue: str
    priority: int
    max_retry: int
    timeout: float
    run_at: Timestamp
    idempotency_key: str | None
    state: TaskState
    attempts: int
    result: dict[str, Any] | None
    error: str | None
    node: str | None
    claimed_by: str | None
    created_at: Timestamp
    updated_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    # the span of the request that submitted it: its claim and run join that trace
    traceparent: str | None = None


class SandboxOut(BaseModel):
    id: str
    name: str
    node: str | None
    driver: str
    vcpus: int
    memory_mb: int
    network: bool
    isolated: bool
    status: SandboxStatus
    created_at: Timestamp
    updated_at: Timestamp


class ExecutionOut(BaseModel):
    id: str
    sandbox_id: str
    task_id: str | None
    command: str
    args: list[str]
    exit_code: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    started_at: Timestamp
    finished_at: Timestamp | None


class AttemptOut(BaseModel):
    """One run of a task on a node: from its claim to what ended it (None: still running)."""

    number: int
    node: str | None
    started_at: float
    ended_at: float | None = None
    outcome: TaskState | None = None  # the state the attempt left the task in
    error: str | None = None
    seconds: float | None = None


class TaskHistoryOut(BaseModel):
    """``GET /tasks/{id}/history``: every recorded state change and the attempts they make."""

    events: list[dict[str, Any]]
    attempts: list[AttemptOut]


# -- the node's side of the task protocol (POST /tasks/claim, /tasks/exchange) --------

MAX_EXCHANGE = 256  # reports, and tasks wanted, in one ``POST /tasks/exchange``


class ClaimIn(Versioned):
    """A node asks for tasks it can run (``POST /tasks/claim``)."""

    SCHEMA_NAME: ClassVar[str] = "task_claim"

    node: str
    drivers: list[str] = Field(default_factory=list)
    queues: list[str] = Field(default_factory=lambda: ["default"])
    wait: Annotated[float, Field(ge=0, le=30)] = 10.0


class TaskHolderIn(Versioned):
    """Who holds a task's claim: the node, and which attempt (the claim's ``attempts``);
    ``POST /tasks/{id}/heartbeat``."""

    SCHEMA_NAME: ClassVar[str] = "task_heartbeat"

    node: str
    attempt: Annotated[int, Field(ge=1)]


class TaskCompleteIn(TaskHolderIn):
    """``POST /tasks/{id}/complete``: the holder's result."""

    SCHEMA_NAME: ClassVar[str] = "task_complete"

    result: dict[str, Any]


class TaskFailIn(TaskHolderIn):
    """``POST /tasks/{id}/fail``: the holder's failure."""

    SCHEMA_NAME: ClassVar[str] = "task_fail"

    error: Annotated[str, Field(max_length=10_000)]
    retryable: bool = True


class TaskHeartbeatOut(Versioned):
    """A task heartbeat's answer: ``ok`` false means the task is no longer the
    holder's to run (cancelled, finished, taken back)."""

    SCHEMA_NAME: ClassVar[str] = "task_heartbeat_reply"

    ok: bool


class ReportIn(BaseModel):
    """One finished attempt: ``result`` for a success, else ``error`` (and ``retryable``)."""

    id: Annotated[str, Field(min_length=1, max_length=64)]
    attempt: Annotated[int, Field(ge=1)]
    result: dict[str, Any] | None = None
    error: Annotated[str, Field(max_length=10_000)] | None = None
    retryable: bool = True

    @model_validator(mode="after")
    def _one_outcome(self) -> ReportIn:
        if (self.result is None) == (self.error is None):
            raise ValueError("a report has either a result or an error")
        return self


class ExchangeIn(ClaimIn):
    """What a node sends: the outcomes it has, and how many more tasks it can take.

    ``wait`` applies only when the request reports nothing: a node with results to
    hand in gets its answer at once.
    """

    SCHEMA_NAME: ClassVar[str] = "task_exchange"

    reports: Annotated[list[ReportIn], Field(max_length=MAX_EXCHANGE)] = Field(default_factory=list)
    want: Annotated[int, Field(ge=0, le=MAX_EXCHANGE)] = 0
    wait: Annotated[float, Field(ge=0, le=30)] = 0.0


class ReportOut(BaseModel):
    """A report's fate: the task's state now, or the error the one-task route would
    have answered (``code``, ``message``), the task then unchanged."""

    id: str
    state: TaskState | None = None
    code: str | None = None
    message: str | None = None


class ExchangeOut(Versioned):
    """The answer to an exchange: one per report, in order, and the tasks claimed."""

    SCHEMA_NAME: ClassVar[str] = "task_exchange_reply"

    reports: list[ReportOut]
    tasks: list[TaskOut]

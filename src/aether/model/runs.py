"""Bodies of the runs API: ``POST /api/v1/agents/{id}/runs``, ``/api/v1/runs…`` and the
node-facing ``/api/v1/agent-runtime/runs/{id}/…`` (``aether.agents.runs`` is the logic)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aether.model.time import Timestamp

__all__ = [
    "ApprovalIn",
    "NextIn",
    "NextOut",
    "RunDetail",
    "RunFileOut",
    "RunIn",
    "RunList",
    "RunOut",
    "StepOut",
    "ToolResultIn",
]

THREAD_ID = r"^[A-Za-z0-9_.-]{1,64}$"


class RunIn(BaseModel):
    """A run to start: ``stream`` answers with the run's event stream (SSE);
    ``background`` answers 202 at once; neither waits up to ``wait`` seconds for the
    run to finish (or to need an approval) and answers it as it then is."""

    model_config = ConfigDict(extra="forbid")

    input: Annotated[str, Field(min_length=1, max_length=100_000)]
    thread_id: Annotated[str, Field(pattern=THREAD_ID)] | None = None
    stream: bool = False
    background: bool = False
    #: a run on a thread that has one under way: refused (409 ``thread_busy``), queued
    #: behind it, or the running one cancelled
    concurrency: Literal["reject", "enqueue", "interrupt"] = "reject"
    wait: Annotated[float, Field(ge=0, le=600)] = 60.0


class StepOut(BaseModel):
    seq: int
    kind: str  # model | tool
    status: str
    call_id: str | None
    tool_id: str | None
    arguments: dict[str, Any] | None  # as kept: the policy's redactions applied
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    decision: str | None
    reasons: list[str] | None
    enforcement_ids: list[int] | None
    approved_by: str | None
    decided_at: Timestamp | None  # when a person approved or rejected the call
    task_id: str | None
    node: str | None
    tokens_in: int
    tokens_out: int
    cost: float
    error: str | None
    idempotency_key: str
    started_at: Timestamp
    finished_at: Timestamp | None
    duration_ms: float | None


class RunOut(BaseModel):
    id: str
    agent_id: str
    agent: str  # the agent's name
    agent_version: int
    thread_id: str
    status: str
    input: str
    output: str | None
    stop_reason: str | None
    error: str | None
    step_count: int
    tool_call_count: int
    tokens_in: int
    tokens_out: int
    cost: float
    node: str | None
    task_id: str | None
    created_by: str
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    pending_approval: StepOut | None = None


class RunDetail(RunOut):
    steps: list[StepOut]


class RunFileOut(BaseModel):
    """A file a sandbox tool of the run wrote under ``/workspace/out``."""

    step: int
    name: str
    size: int
    sha256: str
    created_at: Timestamp


class RunList(BaseModel):
    runs: list[RunOut]


class ApprovalIn(BaseModel):
    """Approve or reject the tool call waiting for a person (``step``: which, when the
    run has several; default the first waiting)."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    step: int | None = None
    reason: Annotated[str, Field(max_length=1000)] = ""


class NextIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: Annotated[str, Field(min_length=1, max_length=128)]
    task_id: Annotated[str, Field(min_length=1, max_length=64)]


class NextOut(BaseModel):
    """What the node driving a run does next: ``execute`` a tool (``step``, ``tool``,
    ``arguments``, ``idempotency_key``, ``secrets``, ``egress_hosts``), ``wait`` and
    ask again, or stop (``done``: the run is final or waits for a person)."""

    action: Literal["execute", "wait", "done"]
    status: str
    step: int | None = None
    tool: dict[str, Any] | None = None
    arguments: dict[str, Any] | None = None
    idempotency_key: str | None = None
    secrets: dict[str, str] = Field(default_factory=dict)
    egress_hosts: list[str] = Field(default_factory=list)
    allow_private: list[str] = Field(default_factory=list)
    tenant: str = "default"
    router_url: str | None = None  # the node's own router, for ``app`` tools


class ToolResultIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: Annotated[str, Field(min_length=1, max_length=128)]
    ok: bool
    output: Annotated[str, Field(max_length=1 << 20)] = ""
    error: Annotated[str, Field(max_length=1 << 16)] | None = None

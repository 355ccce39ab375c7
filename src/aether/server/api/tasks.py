"""Tasks (submit, get, list, cancel), what nodes call to run them, and sandboxes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from aether import tracing
from aether.core.task_history import attempts
from aether.errors import AetherError, NotFoundError
from aether.model.tasks import (
    ClaimIn,
    ExchangeIn,
    ExchangeOut,
    ExecutionOut,
    ReportIn,
    ReportOut,
    SandboxOut,
    TaskCompleteIn,
    TaskFailIn,
    TaskHeartbeatOut,
    TaskHistoryOut,
    TaskHolderIn,
    TaskIn,
    TaskOut,
    TaskState,
)
from aether.server.context import ServerContext, get_context
from aether.server.http.audit import audit_refusal, refuse
from aether.server.http.auth import Caller, NodeCaller, Operator, own_node
from aether.server.services.agent_placements import AgentQueues
from aether.server.services.tasks import (
    record_outcome,
    record_outcomes,
    submit_task,
    submit_tasks,
)
from aether.server.services.tasks import signals as task_signals
from aether.store.records import Principal
from aether.tasks.queue.base import Completion

__all__ = ["router"]

router = APIRouter(tags=["tasks"])
MAX_BATCH = 1000  # tasks in one ``POST /tasks:batch``
Ctx = Annotated[ServerContext, Depends(get_context)]


class BatchIn(BaseModel):
    tasks: Annotated[list[TaskIn], Field(min_length=1, max_length=MAX_BATCH)]


class BatchOut(BaseModel):
    tasks: list[TaskOut]


async def _holder(
    request: Request, caller: Principal, ctx: ServerContext, task_id: str, body: TaskHolderIn
) -> TaskOut:
    """The task, if the calling node holds this attempt's claim: 403 and an audit line if not.

    A task no longer active is answered by the queue (cancelled, finished, taken back).
    """
    own_node(request, caller, body.node)
    task = await ctx.queue.get(task_id)
    if not _holds(task, body.node, body.attempt):
        raise _not_holder(request, caller, body.node, task_id, body.attempt)
    return task


@router.post("/tasks", status_code=201)
async def submit(body: TaskIn, request: Request, caller: Operator, ctx: Ctx) -> TaskOut:
    key = request.headers.get("idempotency-key")
    if key and body.idempotency_key is None:
        body = body.model_copy(update={"idempotency_key": key})
    task = await submit_task(ctx, caller, body)
    ctx.task_submitted.set()
    return task


@router.post("/tasks:batch", status_code=201)
async def submit_batch(body: BatchIn, caller: Operator, ctx: Ctx) -> BatchOut:
    """Submit up to 1,000 tasks in one transaction: all are queued, or none (the
    error names the first bad one as ``tasks[i]``). Answers in the order sent."""
    tasks = await submit_tasks(ctx, caller, body.tasks)
    ctx.task_submitted.set()
    return BatchOut(tasks=tasks)


@router.get("/tasks")
async def list_tasks(
    caller: Caller,
    ctx: Ctx,
    state: TaskState | None = None,
    type: str | None = None,
    queue: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> list[TaskOut]:
    """Newest first; ``before``: the id of the last task of the previous page."""
    return await ctx.queue.list(
        caller.tenant_id, state=state, type=type, queue=queue, limit=limit, before=before
    )


@router.get("/tasks/stats")
async def task_stats(
    caller: Caller,
    ctx: Ctx,
    since: Annotated[
        float | None, Query(ge=0, le=1e10, description="seconds since the epoch")
    ] = None,
) -> dict[str, int]:
    """How many of the caller's tasks are in each state (every state present); with
    ``since``, final states count only the tasks that finished since then."""
    counts = await ctx.queue.stats(caller.tenant_id, since=since)
    return {str(state): n for state, n in counts.items()}


#: How often a long poll reads the task again: a change made on another server.
WAIT_POLL = 0.25


@router.get("/tasks/{task_id}")
async def get_task(
    task_id: str,
    caller: Caller,
    ctx: Ctx,
    wait: Annotated[float, Query(ge=0, le=60)] = 0.0,
) -> TaskOut:
    """The task. ``wait``: a long poll — answer as soon as the task is final (this
    server hears of it at once; another server's change within ``WAIT_POLL``), or
    after ``wait`` seconds with its state then."""
    deadline = time.monotonic() + wait
    while True:
        task = await ctx.queue.get(task_id, caller.tenant_id)
        left = deadline - time.monotonic()
        if task.state.final or left <= 0:
            return task
        await task_signals.wait(task_id, min(left, WAIT_POLL), settled=True)


@router.get("/tasks/{task_id}/history")
async def task_history(task_id: str, caller: Caller, ctx: Ctx) -> TaskHistoryOut:
    """The task's recorded state changes and its attempts (node, start, end, outcome)."""
    await ctx.queue.get(task_id, caller.tenant_id)  # another tenant's task: 404
    changes = await ctx.queue.history(task_id)
    return TaskHistoryOut(
        events=[
            {
                "position": c.position,
                "state": c.state,
                "previous": c.previous,
                "attempt": c.attempt,
                "node": c.node,
                "error": c.error,
                "ts": c.ts,
            }
            for c in changes
        ],
        attempts=attempts(changes),
    )


@router.post("/tasks/{task_id}/cancel")
async def cancel(task_id: str, caller: Operator, ctx: Ctx) -> TaskOut:
    task = await ctx.queue.cancel(task_id, caller.tenant_id)
    _settled(task)
    return task


@router.post("/tasks/claim", response_model=None)
async def claim(
    body: ClaimIn, request: Request, caller: NodeCaller, ctx: Ctx
) -> TaskOut | Response:
    """Long poll: the next task this node may run, or 204 after ``wait`` seconds.

    Besides ``queues`` the node claims from ``agent.{id}`` of every agent placed on it.
    """
    own_node(request, caller, body.node)
    tasks = await _claim(request, ctx, body, want=1, wait=body.wait)
    return tasks[0] if tasks else Response(status_code=204)


@router.post("/tasks/exchange")
async def exchange(body: ExchangeIn, request: Request, caller: NodeCaller, ctx: Ctx) -> ExchangeOut:
    """A node's one request for its tasks: hand in finished attempts and claim up to
    ``want`` more, in one round trip.

    Successes are recorded in one transaction and the claims in another. Each report
    is answered as its own route would (``/complete``, ``/fail``): a report of an
    attempt this node does not hold is refused with an audit line and changes nothing.
    """
    own_node(request, caller, body.node)
    reports = await _take_reports(request, caller, ctx, body.node, body.reports)
    wait = 0.0 if body.reports else body.wait
    tasks = await _claim(request, ctx, body, want=body.want, wait=wait) if body.want else []
    return ExchangeOut(reports=reports, tasks=tasks)


async def _claim(
    request: Request, ctx: ServerContext, body: ClaimIn, *, want: int, wait: float
) -> list[TaskOut]:
    """Up to ``want`` tasks for the node, waiting up to ``wait`` seconds for the first.

    A node that went away mid-poll must not be handed a task it will never run
    (it would sit out a whole lease), so the connection is checked first.
    """
    deadline = time.monotonic() + wait
    agents: AgentQueues = request.app.state.agent_queues
    while True:
        if await request.is_disconnected():
            return []
        # cleared before looking, so a task submitted while this claim looks wakes it
        ctx.task_submitted.clear()
        # the queues of the agents placed on this node too (a cached copy: no query)
        placed = await agents.for_node(body.node)
        started = time.time_ns()
        tasks = await ctx.queue.claim_many(
            body.node,
            node=body.node,
            drivers=body.drivers,
            queues=[*body.queues, *placed] if placed else body.queues,
            lease=ctx.settings.task_lease,
            limit=want,
        )
        if tasks:
            for task in tasks if tracing.enabled() else ():  # in each task's own trace
                tracing.record(
                    f"task claim: {task.type}",
                    parent=task.traceparent,
                    start_ns=started,
                    attributes={"aether.task": task.id, "aether.node": body.node},
                )
            return tasks
        left = deadline - time.monotonic()
        if left <= 0:
            return []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(left, 0.5)):  # delayed tasks come due by themselves
                await ctx.task_submitted.wait()


async def _take_reports(
    request: Request, caller: Principal, ctx: ServerContext, node: str, reports: list[ReportIn]
) -> list[ReportOut]:
    """Record the node's reports (see ``exchange``); one answer per report, in order."""
    if not reports:
        return []
    tasks = await ctx.queue.get_many({r.id for r in reports})
    answers: dict[int, ReportOut] = {}
    successes: list[tuple[int, ReportIn, TaskOut]] = []
    for i, report in enumerate(reports):
        task = tasks.get(report.id)
        if task is None:
            answers[i] = _refused(report, NotFoundError(f"task {report.id} not found"))
        elif not _holds(task, node, report.attempt):
            answers[i] = _refused(
                report, _not_holder(request, caller, node, report.id, report.attempt)
            )
            await audit_refusal(request, f"tasks/{report.id}")
        elif report.result is not None:
            successes.append((i, report, task))
        else:
            answers[i] = await _failed(ctx, node, report)
    if successes:
        active = [(i, r, t) for i, r, t in successes if t.state is TaskState.ACTIVE]
        problems = await record_outcomes(ctx, node, [(t, r.result or {}) for _, r, t in active])
        refused = {i for (i, _, _), p in zip(active, problems, strict=True) if p is not None}
        for (i, report, _), problem in zip(active, problems, strict=True):
            if problem is not None:
                answers[i] = _refused(report, problem)
        taken = [(i, r) for i, r, _ in successes if i not in refused]
        done = await ctx.queue.complete_many(
            node,
            [Completion(r.id, r.result or {}, attempt=r.attempt) for _, r in taken],
        )
        for (i, report), outcome in zip(taken, done, strict=True):
            if isinstance(outcome, AetherError):
                answers[i] = _refused(report, outcome)
            else:
                _settled(outcome)
                answers[i] = ReportOut(id=report.id, state=outcome.state)
    return [answers[i] for i in range(len(reports))]


def _holds(task: TaskOut, node: str, attempt: int) -> bool:
    """Whether ``node`` ran this attempt (a task no longer active is the queue's to answer)."""
    return task.claimed_by == node and (
        task.state is not TaskState.ACTIVE or task.attempts == attempt
    )


def _not_holder(
    request: Request, caller: Principal, node: str, task_id: str, attempt: int
) -> AetherError:
    """The 403 (and its audit line) of a node acting on an attempt it does not hold."""
    return refuse(
        request,
        caller,
        f"tasks/{task_id}",
        f"node {node!r} does not hold the claim of attempt {attempt} of this task",
    )


def _refused(report: ReportIn, error: AetherError) -> ReportOut:
    return ReportOut(id=report.id, code=error.code, message=error.message)


async def _failed(ctx: ServerContext, node: str, report: ReportIn) -> ReportOut:
    try:
        task = await _record_failure(ctx, report.id, node, report.error or "", report.retryable)
    except AetherError as exc:
        return _refused(report, exc)
    return ReportOut(id=report.id, state=task.state)


async def _record_failure(
    ctx: ServerContext, task_id: str, node: str, error: str, retryable: bool
) -> TaskOut:
    """The holder's failure, and the sandbox a failed ``vm:create`` or ``job:run`` was for."""
    task = await ctx.queue.fail(task_id, node, error, retryable=retryable)
    _settled(task)
    if task.state in (TaskState.DEAD, TaskState.FAILED) and task.type in ("vm:create", "job:run"):
        sandbox_id = task.payload.get("vm_id") or task.payload.get("sandbox_id")
        if sandbox_id:
            await ctx.records.update_sandbox(str(sandbox_id), status="failed")
    return task


@router.post("/tasks/{task_id}/heartbeat")
async def heartbeat(
    task_id: str, body: TaskHolderIn, request: Request, caller: NodeCaller, ctx: Ctx
) -> TaskHeartbeatOut:
    task = await _holder(request, caller, ctx, task_id, body)
    if task.state is not TaskState.ACTIVE:
        return TaskHeartbeatOut(ok=False)
    ok = await ctx.queue.heartbeat(task_id, body.node, ctx.settings.task_lease)
    return TaskHeartbeatOut(ok=ok)


@router.post("/tasks/{task_id}/complete")
async def complete(
    task_id: str, body: TaskCompleteIn, request: Request, caller: NodeCaller, ctx: Ctx
) -> TaskOut:
    task = await _holder(request, caller, ctx, task_id, body)
    if task.state is TaskState.ACTIVE:
        await record_outcome(ctx, task, body.node, body.result)  # 400 for a bad result
    done = await ctx.queue.complete(task_id, body.node, body.result)
    _settled(done)
    return done


def _settled(task: TaskOut) -> None:
    """Wake this server's long polls on ``task`` if it is final now."""
    if task.state.final:
        task_signals.notify(task.id, settled=True)


@router.post("/tasks/{task_id}/fail")
async def fail(
    task_id: str, body: TaskFailIn, request: Request, caller: NodeCaller, ctx: Ctx
) -> TaskOut:
    await _holder(request, caller, ctx, task_id, body)
    return await _record_failure(ctx, task_id, body.node, body.error, body.retryable)


def _sandbox_out(row: Any) -> SandboxOut:
    return SandboxOut.model_validate(row, from_attributes=True)


@router.get("/sandboxes")
async def list_sandboxes(
    caller: Caller, ctx: Ctx, include_deleted: bool = False
) -> list[SandboxOut]:
    rows = await ctx.records.list_sandboxes(caller.tenant_id, include_deleted=include_deleted)
    return [_sandbox_out(r) for r in rows]


@router.get("/sandboxes/{sandbox_id}")
async def get_sandbox(sandbox_id: str, caller: Caller, ctx: Ctx) -> SandboxOut:
    return _sandbox_out(await ctx.records.get_sandbox(sandbox_id, caller.tenant_id))


@router.get("/sandboxes/{sandbox_id}/executions")
async def executions(sandbox_id: str, caller: Caller, ctx: Ctx) -> list[ExecutionOut]:
    await ctx.records.get_sandbox(sandbox_id, caller.tenant_id)
    rows = await ctx.records.list_executions(caller.tenant_id, sandbox_id)
    return [ExecutionOut.model_validate(r, from_attributes=True) for r in rows]


@router.get("/executions/{execution_id}")
async def execution(execution_id: str, caller: Caller, ctx: Ctx) -> ExecutionOut:
    row = await ctx.records.get_execution(caller.tenant_id, execution_id)
    return ExecutionOut.model_validate(row, from_attributes=True)

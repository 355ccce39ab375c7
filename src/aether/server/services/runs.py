"""Runs of agents on the server: start one, drive it step by step for the node that
holds its ``agent:run`` task, tools, approvals, cancel, and the run's event stream.

Where the work happens:

- **the server** calls the model (keys never leave the servers), decides every tool
  call with the agent's policies (Cedar), keeps every step and event, and runs the
  ``memory`` and ``aether`` tools itself;
- **a node** holds the run's task (queue ``agent.{agent_id}``: the nodes the agent is
  deployed on) and asks ``drive`` what next: it executes the ``http``, ``app`` and
  ``mcp`` tools and reports their results; a ``sandbox`` tool is a task of its own
  (``agent:sandbox``, keyed by the step's idempotency key) that any node with bwrap runs.

Only the steps say where a run is (``aether.agents.runs.next_move``): a node that dies
mid-run loses its task's lease, the queue hands the task to another node, and that
node continues from the last completed step. A finished tool call is never executed
again; the sandbox tool's task is submitted once per step (idempotency key).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import secrets
import shlex
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from aether.agents.llm import ContentDelta, Done, ModelClient
from aether.agents.mcp import McpError, content_text, stdio_requests, stdio_result
from aether.agents.policy import Counters, DecisionRequest, Policy, redact_arguments
from aether.agents.runs import (
    FINAL_STATUSES,
    AskModel,
    Decide,
    Execute,
    Finish,
    Step,
    WaitApproval,
    cost_of,
    model_stop,
    next_move,
    step_key,
    transcript,
)
from aether.agents.tools import McpConfig, Tool, validate_arguments
from aether.errors import AetherError, BadRequestError, ConflictError, NotFoundError
from aether.model.cluster import NodeRecord
from aether.model.runs import ApprovalIn, NextIn, NextOut, RunIn, RunOut, StepOut, ToolResultIn
from aether.model.tasks import TaskState
from aether.server.context import ServerContext
from aether.server.services.agent_policies import VersionedPolicy, enforce, find_policy, find_tool
from aether.server.services.agent_tools import run_server_tool
from aether.server.services.models import model_endpoint
from aether.server.services.secrets import tenant_secrets
from aether.server.signals import Signals
from aether.store.records.audit import AuditEntry
from aether.store.records.base import Principal, now, utc
from aether.store.records.runs import Usage, new_run_id
from aether.store.records.schema import (
    AgentRow,
    AgentRunFileRow,
    AgentRunRow,
    AgentRunStepRow,
    AgentVersionRow,
)
from aether.tasks.queue.base import NewTask

__all__ = [
    "ACTIVE_STATUSES",
    "SETTLING_EVENTS",
    "approve",
    "cancel_run",
    "dispatch",
    "drive",
    "expire_runs",
    "finish",
    "publish",
    "report_tool",
    "run_out",
    "signals",
    "start_run",
    "step_out",
]

log = logging.getLogger("aether.runs")

ACTIVE_STATUSES = ("queued", "running", "requires_approval")
#: how long one ``drive`` call waits for a sandbox tool's task before answering ``wait``
DRIVE_WAIT = 20.0
OUTPUT_LIMIT = 16_384  # characters of a tool's output kept and given to the model
RUN_TIMEOUT = 3600.0  # seconds an ``agent:run`` task may hold its lease overall


#: the events after which a run is settled: ended, or waiting for a person
SETTLING_EVENTS = frozenset(
    {"run.completed", "run.failed", "run.cancelled", "run.expired", "run.requires_approval"}
)
#: wakes this server's waiters on a run: a stream on any event, a waiting ``POST`` only
#: when the run settles (ends, or waits for a person)
signals = Signals()


# -- answers ------------------------------------------------------------------------------


def step_out(row: AgentRunStepRow) -> StepOut:
    duration = None
    if row.finished_at is not None:
        duration = round((row.finished_at - row.started_at).total_seconds() * 1000, 3)
    return StepOut(
        seq=row.seq,
        kind=row.kind,
        status=row.status,
        call_id=row.call_id,
        tool_id=row.tool_id,
        arguments=row.arguments,
        content=row.content,
        tool_calls=row.tool_calls,
        decision=row.decision,
        reasons=row.reasons,
        enforcement_ids=row.enforcement_ids,
        approved_by=row.approved_by,
        decided_at=row.decided_at,
        task_id=row.task_id,
        node=row.node,
        tokens_in=row.tokens_in,
        tokens_out=row.tokens_out,
        cost=row.cost,
        error=row.error,
        idempotency_key=row.key,
        started_at=row.started_at,
        finished_at=row.finished_at,
        duration_ms=duration,
    )


def run_out(run: AgentRunRow, agent_name: str, pending: AgentRunStepRow | None = None) -> RunOut:
    return RunOut(
        id=run.id,
        agent_id=run.agent_id,
        agent=agent_name,
        agent_version=run.agent_version,
        thread_id=run.thread_id,
        status=run.status,
        input=run.input,
        output=run.output,
        stop_reason=run.stop_reason,
        error=run.error,
        step_count=run.steps,
        tool_call_count=run.tool_calls,
        tokens_in=run.tokens_in,
        tokens_out=run.tokens_out,
        cost=round(run.cost, 8),
        node=run.node,
        task_id=run.task_id,
        created_by=run.created_by,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        pending_approval=step_out(pending) if pending is not None else None,
    )


async def publish(ctx: ServerContext, run: AgentRunRow, type_: str, data: dict[str, Any]) -> int:
    seq = await ctx.records.add_run_event(run.tenant_id, run.id, type_, data)
    signals.notify(run.id, settled=type_ in SETTLING_EVENTS)
    return seq


def _step_event(row: AgentRunStepRow) -> dict[str, Any]:
    return step_out(row).model_dump(mode="json")


# -- starting, finishing, cancelling ------------------------------------------------------


async def start_run(
    ctx: ServerContext, caller: Principal, agent: AgentRow, body: RunIn
) -> AgentRunRow:
    """A new run of ``agent`` (queued; its task submitted unless it waits its turn)."""
    if agent.status == "disabled":
        raise ConflictError(f"agent {agent.name!r} is disabled", code="agent_disabled")
    thread = await ctx.records.thread_for(caller.tenant_id, agent.id, body.thread_id)
    if thread is None:
        raise NotFoundError(f"thread {body.thread_id!r} not found")
    busy = await ctx.records.runs(caller.tenant_id, thread_id=thread.id, statuses=ACTIVE_STATUSES)
    if busy and body.concurrency == "reject":
        raise ConflictError(
            f"thread {thread.id} has a run under way ({busy[0].id}); wait for it, or pass "
            '"concurrency": "enqueue" or "interrupt"',
            code="thread_busy",
        )
    run_id = new_run_id()
    deployment = await ctx.records.agent_deployment(agent.id)
    # a deployed agent runs the version its deploy pinned; else the one in use
    version = deployment.version if deployment is not None else agent.current_version
    if busy and body.concurrency == "interrupt":
        for other in busy:
            await cancel_run(ctx, other, by=f"run {run_id}", reason=f"interrupted by run {run_id}")
    run = await ctx.records.add_run(
        AgentRunRow(
            id=run_id,
            tenant_id=caller.tenant_id,
            agent_id=agent.id,
            agent_version=version,
            thread_id=thread.id,
            status="queued",
            input=body.input,
            output=None,
            stop_reason=None,
            error=None,
            concurrency=body.concurrency,
            created_by=caller.user or f"token:{caller.token_id}",
            task_id=None,
            node=None,
            steps=0,
            tool_calls=0,
            tokens_in=0,
            tokens_out=0,
            cost=0.0,
            created_at=now(),
            started_at=None,
            finished_at=None,
        )
    )
    await publish(ctx, run, "run.queued", {"run_id": run.id, "thread_id": thread.id})
    ctx.metrics.agents.started(caller.tenant, agent.name)
    if not (busy and body.concurrency == "enqueue"):
        await dispatch(ctx, run)
    return await _reload(ctx, run)


async def _reload(ctx: ServerContext, run: AgentRunRow) -> AgentRunRow:
    fresh = await ctx.records.run(run.id)
    assert fresh is not None
    return fresh


async def dispatch(ctx: ServerContext, run: AgentRunRow) -> None:
    """Submit the task that drives the run, to the queue of the agent's nodes.

    The run's ``task_id`` is cleared first and set after: a node may claim the task
    and ask ``drive`` before this records it, and ``drive`` then takes the run for the
    task itself (``take_run_task``); an older task of the run is refused."""
    if run.task_id is not None:
        await ctx.records.set_run(run.id, task_id=None)
    task = await ctx.queue.submit(
        run.tenant_id,
        NewTask(
            type="agent:run",
            payload={"run_id": run.id},
            queue=f"agent.{run.agent_id}",
            priority=5,
            max_retry=10,
            timeout=RUN_TIMEOUT,
            idempotency_key=f"{run.id}:drive:{secrets.token_hex(4)}",
        ),
    )
    await ctx.records.take_run_task(run.id, task.id)
    ctx.task_submitted.set()


async def finish(
    ctx: ServerContext,
    run: AgentRunRow,
    status: str,
    *,
    output: str | None = None,
    stop_reason: str,
    error: str | None = None,
) -> bool:
    """End the run (False: it had ended already); the thread's next run gets its turn."""
    ended = await ctx.records.set_run(
        run.id,
        only_from=ACTIVE_STATUSES,
        status=status,
        output=output,
        stop_reason=stop_reason,
        error=error,
        finished_at=now(),
    )
    if not ended:
        return False
    data: dict[str, Any] = {"status": status, "stop_reason": stop_reason}
    if output is not None:
        data["output"] = output
    if error is not None:
        data["error"] = error
    await publish(ctx, run, f"run.{status}", data)
    tenant, agent = await _names(ctx, run)
    ctx.metrics.agents.finished(tenant, agent, status)
    following = await ctx.records.queued_unstarted(run.thread_id)
    if following is not None:
        await dispatch(ctx, following)
    return True


_NAMES: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()


async def _names(ctx: ServerContext, run: AgentRunRow) -> tuple[str, str]:
    """The run's tenant and agent names (neither changes: kept for the metrics' labels)."""
    key = (run.tenant_id, run.agent_id)
    found = _NAMES.get(key)
    if found is None:
        agent = await ctx.records.agent(run.tenant_id, run.agent_id)
        tenant = await ctx.records.tenant_name(run.tenant_id)
        found = _NAMES[key] = (tenant, agent.name if agent else run.agent_id)
        while len(_NAMES) > 4096:
            _NAMES.popitem(last=False)
    return found


async def cancel_run(ctx: ServerContext, run: AgentRunRow, *, by: str, reason: str = "") -> bool:
    """Cancel the run and the tasks working on it (their nodes stop at the next heartbeat)."""
    if not await finish(
        ctx, run, "cancelled", stop_reason="cancelled", error=reason or f"cancelled by {by}"
    ):
        return False
    tasks = [run.task_id] + [s.task_id for s in await ctx.records.steps(run.id)]
    for task_id in filter(None, tasks):
        with contextlib.suppress(AetherError):
            await ctx.queue.cancel(task_id, run.tenant_id)
    return True


async def approve(
    ctx: ServerContext, caller: Principal, run: AgentRunRow, body: ApprovalIn
) -> AgentRunStepRow:
    """Approve or reject a tool call waiting for a person; the run goes on either way."""
    waiting = [s for s in await ctx.records.steps(run.id) if s.status == "pending_approval"]
    if body.step is not None:
        waiting = [s for s in waiting if s.seq == body.step]
    if run.status != "requires_approval" or not waiting:
        raise ConflictError(
            f"run {run.id} has no tool call waiting for approval"
            + (f" at step {body.step}" if body.step is not None else "")
            + f" (status {run.status})",
            code="no_pending_approval",
        )
    step = waiting[0]
    who = caller.user or f"token:{caller.token_id}"
    approved = body.decision == "approve"
    fields: dict[str, Any] = {
        "status": "approved" if approved else "rejected",
        "approved_by": who,
        "decided_at": now(),
    }
    if not approved:
        fields.update(content=body.reason or "rejected", finished_at=now())
    if not await ctx.records.set_step(run.id, step.seq, only_from=("pending_approval",), **fields):
        raise ConflictError(f"step {step.seq} was decided meanwhile", code="no_pending_approval")
    decided = await ctx.records.step(run.id, step.seq)
    assert decided is not None
    await publish(
        ctx,
        run,
        "approval.decided",
        {"step": step.seq, "decision": body.decision, "by": who, "reason": body.reason},
    )
    if await ctx.records.set_run(run.id, only_from=("requires_approval",), status="running"):
        await dispatch(ctx, run)
    return decided


# -- driving a run (the node asks) -------------------------------------------------------


def _view(row: AgentRunStepRow) -> Step:
    return Step(
        seq=row.seq,
        kind="model" if row.kind == "model" else "tool",
        status=row.status,
        call_id=row.call_id,
        tool_id=row.tool_id,
        arguments=row.arguments,
        content=row.content,
        tool_calls=row.tool_calls or (),
    )


class _Agent:
    """What driving a run needs of its agent's pinned version."""

    def __init__(
        self,
        agent: AgentRow,
        version: AgentVersionRow,
        policies: list[VersionedPolicy],
        tools: dict[str, Tool],
        tenant: str,
    ) -> None:
        self.agent = agent
        self.version = version
        self.policies = policies
        self.tools = tools
        self.tenant = tenant

    @property
    def rules(self) -> list[Policy]:
        return [p.policy for p in self.policies]


async def _load_agent(ctx: ServerContext, run: AgentRunRow) -> _Agent:
    agent = await ctx.records.agent(run.tenant_id, run.agent_id)
    version = await ctx.records.agent_version(run.agent_id, run.agent_version)
    if agent is None or version is None:
        raise NotFoundError(f"agent {run.agent_id} of run {run.id} is gone")
    policies = [await find_policy(ctx, run.tenant_id, p) for p in version.policy_ids]
    tools: dict[str, Tool] = {}
    for tool_id in version.tool_ids:
        tool = await find_tool(ctx, run.tenant_id, tool_id)
        if tool is not None:
            tools[tool.id] = tool
    return _Agent(agent, version, policies, tools, await ctx.records.tenant_name(run.tenant_id))


async def drive(ctx: ServerContext, run_id: str, body: NextIn) -> NextOut:
    """Take the run as far as the server can, and tell the node what is next."""
    run = await ctx.records.run(run_id)
    if run is None:
        raise NotFoundError(f"run {run_id!r} not found")
    if run.status in FINAL_STATUSES or run.status == "requires_approval":
        return NextOut(action="done", status=run.status)
    if run.task_id != body.task_id and not await ctx.records.take_run_task(run.id, body.task_id):
        raise ConflictError(f"run {run.id} is driven by task {run.task_id}, not {body.task_id}")
    if run.status == "queued":
        if await ctx.records.set_run(
            run.id, only_from=("queued",), status="running", started_at=now(), node=body.node
        ):
            await publish(ctx, run, "run.started", {"node": body.node})
    elif run.node != body.node:
        await ctx.records.set_run(run.id, node=body.node)
        await publish(ctx, run, "run.resumed", {"node": body.node, "after": run.node})
    found = await _load_agent(ctx, run)
    deadline = time.monotonic() + DRIVE_WAIT
    while True:
        fresh, steps = await ctx.records.run_with_steps(run.id)
        assert fresh is not None
        run, rows = fresh, list(steps)
        if run.status != "running":
            return NextOut(action="done", status=run.status)
        move = next_move([_view(r) for r in rows])
        if isinstance(move, Finish):
            await finish(ctx, run, "completed", output=move.output, stop_reason="completed")
            return NextOut(action="done", status="completed")
        if isinstance(move, AskModel):
            if not await _model_step(ctx, run, found, rows):
                return NextOut(action="done", status=(await _reload(ctx, run)).status)
            continue
        if isinstance(move, Decide):
            await _decide(ctx, run, found, move)
            continue
        if isinstance(move, WaitApproval):
            if await ctx.records.set_run(
                run.id, only_from=("running",), status="requires_approval"
            ):
                await publish(
                    ctx, run, "run.requires_approval", {"step": _step_event(_row(rows, move))}
                )
            return NextOut(action="done", status="requires_approval")
        assert isinstance(move, Execute)
        row = _row(rows, move)
        tool = found.tools.get(row.tool_id or "")
        if tool is None:
            await _resolve(ctx, run, found, row, ok=False, output="", error="the tool is gone")
            continue
        if tool.kind in ("memory", "aether"):
            ok, output = await _server_tool(ctx, run, tool, _arguments_of(run, row, rows))
            await _resolve(ctx, run, found, row, ok=ok, output=output, error=None if ok else output)
            continue
        if tool.kind == "sandbox" or (isinstance(tool.config, McpConfig) and tool.config.command):
            if await _sandbox_step(ctx, run, found, tool, row, rows, deadline):
                continue
            return NextOut(action="wait", status="running")
        return await _node_tool(ctx, run, found, tool, row, rows, body.node)


def _row(rows: Sequence[AgentRunStepRow], move: Execute | WaitApproval) -> AgentRunStepRow:
    return next(r for r in rows if r.seq == move.step.seq)


def _today() -> datetime:
    return now().replace(hour=0, minute=0, second=0, microsecond=0)


async def _counters(ctx: ServerContext, run: AgentRunRow, found: _Agent) -> Counters:
    """What the run used so far; the day's totals only when a policy caps them (they
    cost a query each)."""
    day = _today()
    budgets = [p.token_budgets for p in found.rules]
    agent_day = tenant_day = 0
    if any(b.per_agent_per_day is not None for b in budgets):
        agent_day = await ctx.records.tokens_since(run.tenant_id, day, run.agent_id)
    if any(b.per_tenant_per_day is not None for b in budgets):
        tenant_day = await ctx.records.tokens_since(run.tenant_id, day, None)
    return Counters(
        steps=run.steps,
        tool_calls=run.tool_calls,
        tokens_run=run.tokens_in + run.tokens_out,
        tokens_agent_day=agent_day,
        tokens_tenant_day=tenant_day,
    )


def _tool_specs(tools: Mapping[str, Tool]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {"name": t.id, "description": t.description, "parameters": t.parameters},
        }
        for t in tools.values()
    ]


async def _history(ctx: ServerContext, run: AgentRunRow) -> list[dict[str, Any]]:
    """The thread's earlier finished turns: each input and what the agent answered."""
    earlier = await ctx.records.runs(
        run.tenant_id,
        thread_id=run.thread_id,
        statuses=("completed",),
        before=run.created_at,
        limit=50,
    )
    messages: list[dict[str, Any]] = []
    for turn in reversed(earlier):
        messages.append({"role": "user", "content": turn.input})
        messages.append({"role": "assistant", "content": turn.output or ""})
    return messages


async def _model_step(
    ctx: ServerContext, run: AgentRunRow, found: _Agent, rows: list[AgentRunStepRow]
) -> bool:
    """Ask the model (streaming its text to the run's stream) and keep the step.
    False: the run ended instead (a budget, a model that failed)."""
    counters = await _counters(ctx, run, found)
    stop = model_stop(
        found.rules,
        steps=counters.steps,
        tokens_run=counters.tokens_run,
        tokens_agent_day=counters.tokens_agent_day,
        tokens_tenant_day=counters.tokens_tenant_day,
    )
    if stop is not None:
        await finish(ctx, run, "failed", stop_reason=stop[0], error=stop[1])
        return False
    name = found.version.model.removeprefix("model://")
    model = await ctx.records.get_model(run.tenant_id, name)
    if model is None:
        await finish(ctx, run, "failed", stop_reason="error", error=f"model {name!r} not found")
        return False
    number = sum(1 for r in rows if r.kind == "model") + 1
    messages = transcript(
        found.version.system_prompt, await _history(ctx, run), run.input, [_view(r) for r in rows]
    )
    max_tokens = int(found.version.config.get("max_tokens", 1024))
    started = now()
    clock = time.monotonic()
    await publish(ctx, run, "step.started", {"kind": "model", "model": name})
    try:
        result = await _stream_model(ctx, run, model, messages, found, max_tokens)
    except AetherError as exc:
        await finish(ctx, run, "failed", stop_reason="error", error=exc.message)
        return False
    if (await _reload(ctx, run)).status != "running":  # cancelled while the model thought
        return False
    tokens_in = result.usage.prompt_tokens if result.usage else 0
    tokens_out = result.usage.completion_tokens if result.usage else 0
    cost = cost_of(tokens_in, tokens_out, model.price_in_per_1k, model.price_out_per_1k)
    _, added = await ctx.records.add_step(
        AgentRunStepRow(
            run_id=run.id,
            tenant_id=run.tenant_id,
            kind="model",
            status="completed",
            key=step_key(run.id, f"model:{number}"),
            content=result.content,
            tool_calls=[
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in result.tool_calls
            ],
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost=cost,
            started_at=started,
            finished_at=now(),
        ),
        usage=Usage(steps=1, tokens_in=tokens_in, tokens_out=tokens_out, cost=cost),
        events=[("step.completed", _step_event)],
    )
    if added:
        signals.notify(run.id)
        ctx.metrics.agents.step(
            found.tenant,
            found.agent.name,
            "model",
            time.monotonic() - clock,
            tokens_in,
            tokens_out,
            cost,
        )
    return True


async def _stream_model(
    ctx: ServerContext,
    run: AgentRunRow,
    model: Any,
    messages: list[dict[str, Any]],
    found: _Agent,
    max_tokens: int,
) -> Any:
    """The completion, its text published to the run's stream as it comes (in pieces
    of at most ~50 ms, so a fast model does not write one event per token)."""
    pending: list[str] = []
    flushed = 0.0
    client = _model_client(ctx, model)
    async for delta in client.stream_chat(
        messages, _tool_specs(found.tools) or None, max_tokens=max_tokens
    ):
        if isinstance(delta, ContentDelta) and delta.text:
            pending.append(delta.text)
            if time.monotonic() - flushed >= 0.05:
                await publish(ctx, run, "delta", {"text": "".join(pending)})
                pending.clear()
                flushed = time.monotonic()
        elif isinstance(delta, Done):
            if pending:
                await publish(ctx, run, "delta", {"text": "".join(pending)})
            return delta.result
    raise BadRequestError("the model's stream ended without a result")


_CLIENTS: OrderedDict[tuple[int, str, str, str | None], ModelClient] = OrderedDict()
_CLIENTS_KEPT = 64


def _model_client(ctx: ServerContext, model: Any) -> ModelClient:
    """A client per model endpoint, kept (an HTTP client costs tens of milliseconds to
    make: its TLS context) and reused by every step of every run on this server."""
    endpoint = model_endpoint(ctx, model)
    key = (id(ctx), endpoint.base_url, endpoint.model_id, endpoint.api_key)
    client = _CLIENTS.get(key)
    if client is None:
        client = _CLIENTS[key] = ModelClient(endpoint)
        while len(_CLIENTS) > _CLIENTS_KEPT:
            _, old = _CLIENTS.popitem(last=False)
            asyncio.get_running_loop().create_task(old.aclose())
    else:
        _CLIENTS.move_to_end(key)
    return client


async def _decide(ctx: ServerContext, run: AgentRunRow, found: _Agent, move: Decide) -> None:
    """Decide one tool call with every policy of the agent and keep it as a tool step."""
    call_id = str(move.call.get("id") or f"call-{move.after}")
    tool_id = str(move.call.get("name") or "")
    arguments = dict(move.call.get("arguments") or {})
    key = step_key(run.id, f"{move.after}:{call_id}")
    tool = found.tools.get(tool_id)
    status, reasons, decision, enforcement_ids = "running", [], "allow", []
    problem: str | None = None
    if tool is None:
        status, decision = "denied", "deny"
        reasons = [f"the agent has no tool {tool_id!r}"]
    else:
        try:
            validate_arguments(tool, arguments)
        except BadRequestError as exc:
            status, decision, problem = "failed", "deny", exc.message
            reasons = [exc.message]
    if tool is not None and problem is None:
        counters = await _counters(ctx, run, found)
        request = DecisionRequest(
            principal_kind="agent",
            principal=run.agent_id,
            tool_id=tool.id,
            arguments=arguments,
            counters=counters,
        )
        needs_approval = False
        for versioned in found.policies:
            verdict, row = await enforce(ctx, run.tenant_id, versioned, tool, request)
            enforcement_ids.append(row.id)
            reasons.extend(verdict.reasons)
            if not verdict.allowed:
                status, decision = "denied", "deny"
            elif verdict.needs_approval:
                needs_approval = True
        if not found.policies:
            status, decision = "denied", "deny"
            reasons = ["the agent has no policy: nothing is allowed"]
        if status == "running" and needs_approval:
            status, decision = "pending_approval", "approval"
    kept = redact_arguments(arguments, [n for p in found.rules for n in p.redact])
    resolved = status in ("denied", "failed")
    step, added = await ctx.records.add_step(
        AgentRunStepRow(
            run_id=run.id,
            tenant_id=run.tenant_id,
            kind="tool",
            status=status,
            key=key,
            call_id=call_id,
            tool_id=tool_id[:64],
            arguments=kept,
            content="; ".join(reasons) if resolved else None,
            decision=decision,
            reasons=reasons,
            enforcement_ids=enforcement_ids,
            tokens_in=0,
            tokens_out=0,
            cost=0.0,
            error=problem,
            started_at=now(),
            finished_at=now() if resolved else None,
        ),
        usage=Usage(steps=1, tool_calls=1),
        events=[("step.started", _step_event)]
        + ([("step.completed", _step_event)] if resolved else []),
    )
    if not added:
        return
    signals.notify(run.id)
    audit = await _audit_decision(ctx, run, found, step)
    await ctx.records.link_enforcements(enforcement_ids, run.id, step.seq, audit)


async def _audit_decision(
    ctx: ServerContext, run: AgentRunRow, found: _Agent, step: AgentRunStepRow
) -> int | None:
    entry = AuditEntry(
        ts=time.time(),
        actor_kind="agent",
        actor=f"agent:{found.agent.name}",
        action="agent.tool_call",
        target=f"runs/{run.id}/steps/{step.seq}",
        outcome={"deny": "denied", "approval": "pending"}.get(step.decision or "", "ok"),
        tenant_id=run.tenant_id,
        tenant=found.tenant,
        detail=f"{step.tool_id}: {step.decision} ({'; '.join(step.reasons or [])})"[:1000],
    )
    try:
        return (await ctx.records.append_audit(entry)).id
    except Exception:
        log.exception("audit event of run %s step %d not written", run.id, step.seq)
        return None


def _bounded(text: str) -> str:
    if len(text) <= OUTPUT_LIMIT:
        return text
    return text[:OUTPUT_LIMIT] + f"\n[… {len(text) - OUTPUT_LIMIT} more characters cut]"


async def _resolve(
    ctx: ServerContext,
    run: AgentRunRow,
    found: _Agent,
    row: AgentRunStepRow,
    *,
    ok: bool,
    output: str,
    error: str | None,
    node: str | None = None,
    redact: Mapping[str, str] | None = None,
) -> None:
    """Keep a tool call's result (once: a second report of the same step changes nothing)."""
    text = _bounded(output)
    for name, value in (redact or {}).items():
        if value:
            text = text.replace(value, f"[redacted:{name}]")
    fields: dict[str, Any] = {
        "status": "completed" if ok else "failed",
        "content": text,
        "error": None if ok else (error or text)[:2000],
        "node": node,
        "finished_at": now(),
    }
    done = await ctx.records.finish_step(
        row, fields, only_from=("running", "approved"), event=("step.completed", _step_event)
    )
    if done:
        signals.notify(run.id)
        seconds = (fields["finished_at"] - row.started_at).total_seconds()
        ctx.metrics.agents.step(found.tenant, found.agent.name, "tool", seconds, 0, 0, 0.0)


async def _redactions(ctx: ServerContext, run: AgentRunRow, found: _Agent) -> dict[str, str]:
    """The values of the secrets the agent's policies list for redaction."""
    names = sorted({n for p in found.rules for n in p.redact})
    if not names:
        return {}
    return await tenant_secrets(ctx, run.tenant_id, names)


async def _node_tool(
    ctx: ServerContext,
    run: AgentRunRow,
    found: _Agent,
    tool: Tool,
    row: AgentRunStepRow,
    rows: Sequence[AgentRunStepRow],
    node: str,
) -> NextOut:
    """An ``http``, ``app`` or ``mcp`` call for the node to make (an ``app`` call through
    the node's own router)."""
    router_url: str | None = None
    kv = await ctx.store.get(f"nodes/{node}")
    if kv is not None:
        router_url = NodeRecord.model_validate_json(kv.value).router_url
    headers = getattr(tool.config, "headers", {}) or {}
    secret_values = await tenant_secrets(ctx, run.tenant_id, sorted(set(headers.values())))
    hosts = sorted({h for p in found.rules for h in p.egress_hosts})
    arguments = _arguments_of(run, row, rows)
    return NextOut(
        action="execute",
        status="running",
        step=row.seq,
        tool=tool.model_dump(mode="json"),
        arguments=arguments,
        idempotency_key=row.key,
        secrets=secret_values,
        egress_hosts=hosts,
        allow_private=list(ctx.settings.egress_allow),
        tenant=found.tenant,
        router_url=router_url,
    )


def _arguments_of(
    run: AgentRunRow, row: AgentRunStepRow, rows: Sequence[AgentRunStepRow]
) -> dict[str, Any]:
    """The call's arguments as the model gave them (the step keeps them redacted)."""
    for step in rows:
        if step.kind == "model" and step.tool_calls:
            for call in step.tool_calls:
                if row.key == step_key(run.id, f"{step.seq}:{call.get('id')}"):
                    return dict(call.get("arguments") or {})
    return dict(row.arguments or {})


async def report_tool(ctx: ServerContext, run_id: str, seq: int, body: ToolResultIn) -> None:
    """A node's result of an ``http``, ``app`` or ``mcp`` call."""
    run = await ctx.records.run(run_id)
    row = await ctx.records.step(run_id, seq) if run is not None else None
    if run is None or row is None:
        raise NotFoundError(f"step {seq} of run {run_id!r} not found")
    found = await _load_agent(ctx, run)
    await _resolve(
        ctx,
        run,
        found,
        row,
        ok=body.ok,
        output=body.output if body.ok else (body.output or body.error or ""),
        error=body.error,
        node=body.node,
        redact=await _redactions(ctx, run, found),
    )


# -- the tools the server runs -------------------------------------------------------------


def _sandbox_command(tool: Tool, arguments: dict[str, Any]) -> tuple[list[str], str | None]:
    """The command a sandbox task runs for the call, and its stdin: a ``sandbox`` tool's
    snippet or command, or a stdio ``mcp`` server's command fed the JSON-RPC requests.
    ValueError when a command template lacks an argument."""
    config = tool.config
    if isinstance(config, McpConfig):
        assert config.command is not None
        params = {"name": config.tool or tool.id, "arguments": arguments}
        return list(config.command), stdio_requests("tools/call", params)
    if getattr(config, "mode", "command") == "python":
        return ["python3", "-c", str(arguments.get("code", ""))], None
    template = getattr(config, "command", None)
    try:
        # each argument one shell word: a value cannot add commands to the template
        quoted = {k: shlex.quote(str(v)) for k, v in arguments.items()}
        text = template.format(**quoted) if template else str(arguments["command"])
    except (KeyError, IndexError) as exc:
        raise ValueError(
            f"the command template needs an argument it was not given: {exc}"
        ) from None
    return ["/bin/sh", "-c", text], None


def _sandbox_outcome(tool: Tool, result: dict[str, Any], kept: str) -> tuple[bool, str, str | None]:
    """(ok, output, error) of a finished sandbox task: the command's output, or the
    stdio MCP server's answer to the call."""
    code = result.get("exit_code")
    stdout = str(result.get("stdout", ""))
    stderr = str(result.get("stderr") or "")
    if tool.kind == "mcp":
        try:
            answer = stdio_result(stdout, "tools/call")
        except McpError as exc:
            detail = f"{exc} (exit code {code}{'; stderr: ' + stderr[:500] if stderr else ''})"
            return False, "", detail
        text = content_text(answer)
        if answer.get("isError"):
            return False, text, text or "the tool reported an error"
        return True, text, None
    text = stdout
    if kept:
        text += ("\n" if text else "") + "kept files: " + kept
    if stderr:
        text += ("\n" if text else "") + "stderr: " + stderr
    if code == 0:
        return True, text, None
    return False, f"exit code {code}\n{text}", f"exit code {code}"


async def _sandbox_step(
    ctx: ServerContext,
    run: AgentRunRow,
    found: _Agent,
    tool: Tool,
    row: AgentRunStepRow,
    rows: Sequence[AgentRunStepRow],
    deadline: float,
) -> bool:
    """Submit the task of a sandbox tool or a stdio MCP server (once: the step's key is
    its idempotency key) and wait for it until ``deadline``. True: the step is resolved."""
    try:
        command, stdin = _sandbox_command(tool, _arguments_of(run, row, rows))
    except ValueError as exc:
        await _resolve(ctx, run, found, row, ok=False, output="", error=str(exc))
        return True
    hosts = sorted({h for p in found.rules for h in p.egress_hosts})
    task_id = row.task_id
    if task_id is None:
        try:
            task_id = await _submit_sandbox_task(
                ctx, run, found, row, command, stdin, hosts, tool.config
            )
        except AetherError as exc:  # the named sandbox is not the tenant's, or not running
            await _resolve(ctx, run, found, row, ok=False, output="", error=exc.message)
            return True
        await ctx.records.set_step(run.id, row.seq, task_id=task_id)
        ctx.task_submitted.set()
    while True:
        task_out = await ctx.queue.get(task_id)
        if task_out.state is TaskState.SUCCEEDED:
            result = task_out.result or {}
            kept = await _keep_files(ctx, run, row, result)
            ok, output, error = _sandbox_outcome(tool, result, kept)
            await _resolve(
                ctx,
                run,
                found,
                row,
                ok=ok,
                output=output,
                error=error,
                node=task_out.claimed_by,
                redact=await _redactions(ctx, run, found),
            )
            return True
        if task_out.state.final:
            error = task_out.error or str(task_out.state)
            await _resolve(ctx, run, found, row, ok=False, output="", error=error)
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)


async def _submit_sandbox_task(
    ctx: ServerContext,
    run: AgentRunRow,
    found: _Agent,
    row: AgentRunStepRow,
    command: list[str],
    stdin: str | None,
    hosts: list[str],
    config: Any,
) -> str:
    """The task that runs a sandbox tool's command: in a fresh sandbox (``agent:sandbox``,
    any node), or in the tenant's named sandbox (``vm:execute`` on its node). The step's
    idempotency key is the task's: submitted twice, it is one task."""
    timeout = float(found.version.config.get("tool_timeout", 120))
    named = getattr(config, "sandbox", None)  # a sandbox tool's; an mcp server's is fresh
    if named:
        sandbox = await ctx.records.get_sandbox(named, run.tenant_id)  # 404 if not the tenant's
        if sandbox.status == "deleted" or sandbox.node is None:
            raise ConflictError(f"sandbox {named} is not running (status {sandbox.status})")
        spec = NewTask(
            type="vm:execute",
            payload={"vm_id": named, "command": command[0], "args": command[1:], "stdin": stdin},
            max_retry=2,
            timeout=timeout,
            idempotency_key=row.key,
            node=sandbox.node,
        )
    else:
        spec = NewTask(
            type="agent:sandbox",
            payload={
                "run_id": run.id,
                "step": row.seq,
                "command": command,
                "network": bool(hosts),
                "sandbox_id": "tool-" + secrets.token_hex(6),
                "stdin": stdin,
            },
            max_retry=2,
            timeout=timeout,
            idempotency_key=row.key,
        )
    return (await ctx.queue.submit(run.tenant_id, spec)).id


async def _keep_files(
    ctx: ServerContext, run: AgentRunRow, row: AgentRunStepRow, result: dict[str, Any]
) -> str:
    """Keep the files a sandbox tool wrote under /workspace/out; what to tell the model."""
    files = result.get("files") or []
    rows = []
    for f in files:
        content = base64.b64decode(str(f.get("content", "")))
        rows.append(
            AgentRunFileRow(
                run_id=run.id,
                step=row.seq,
                name=str(f["name"])[:255],
                tenant_id=run.tenant_id,
                size=len(content),
                sha256=hashlib.sha256(content).hexdigest(),
                content=content,
                created_at=now(),
            )
        )
    if rows:
        await ctx.records.add_run_files(rows)
    names = ", ".join(f"{r.name} ({r.size} bytes)" for r in rows)
    dropped = int(result.get("files_dropped") or 0)
    if dropped:
        names += f"{', ' if names else ''}{dropped} more not kept (too many or too large)"
    return names


async def _server_tool(
    ctx: ServerContext, run: AgentRunRow, tool: Tool, arguments: dict[str, Any]
) -> tuple[bool, str]:
    """Run a ``memory`` or ``aether`` tool here: (ok, output)."""
    try:
        return await run_server_tool(ctx, run, tool, arguments)
    except AetherError as exc:
        return False, exc.message
    except Exception as exc:  # a tool's failure is the run's information, not a crash
        log.exception("tool %s of run %s failed", tool.id, run.id)
        return False, f"{type(exc).__name__}: {exc}"


async def expire_runs(ctx: ServerContext, now_ts: float) -> int:
    """Expire the runs no node started within ``agent_run_queue_timeout`` and those that
    waited for a person longer than ``agent_run_approval_timeout``; how many."""
    settings = ctx.settings
    expired = 0
    for status, limit, why in (
        ("queued", settings.agent_run_queue_timeout, "no node started it"),
        ("requires_approval", settings.agent_run_approval_timeout, "no one decided its approval"),
    ):
        cutoff = utc(now_ts - limit)
        for run in await ctx.records.runs_waiting_since(status, cutoff):
            message = f"expired: {why} within {limit:g} s"
            if await finish(ctx, run, "expired", stop_reason="expired", error=message):
                if run.task_id:
                    with contextlib.suppress(AetherError):
                        await ctx.queue.cancel(run.task_id, run.tenant_id)
                expired += 1
    return expired

"""Runs of agents (issue 17): start, list, read, stream, cancel, approve; and the two
routes the node driving a run calls (``/agent-runtime/…``, node credentials only).

``POST /agents/{agent}/runs`` starts a run: ``stream`` answers with its event stream
(SSE), ``background`` 202 at once, else the run once it ended or needs an approval
(or after ``wait`` seconds, as it then is). ``GET /runs/{id}/events`` is the stream,
resumable with ``Last-Event-ID`` (or ``?after=N``). Another tenant's agent, run or
thread is a 404 like an unknown one. ``/api/runs…`` aliases ``/api/v1/runs…``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from aether.agents.runs import FINAL_STATUSES, RUN_STATUSES
from aether.errors import BadRequestError, NotFoundError
from aether.model.runs import (
    ApprovalIn,
    NextIn,
    NextOut,
    RunDetail,
    RunFileOut,
    RunIn,
    RunList,
    RunOut,
    StepOut,
    ToolResultIn,
)
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Caller, NodeCaller, Operator, own_node
from aether.server.services import runs as service
from aether.store.records.schema import AgentRow, AgentRunRow

__all__ = ["router"]

router = APIRouter(tags=["runs"])
Ctx = Annotated[ServerContext, Depends(get_context)]
STREAM_POLL = 0.25  # seconds between reads of the stream when nothing woke it here
_SSE: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


async def _agent(ctx: ServerContext, tenant_id: str, ref: str) -> AgentRow:
    """The tenant's agent by id (``agt_…``) or name."""
    agent = await ctx.records.agent(tenant_id, ref)
    if agent is None:
        raise NotFoundError(f"agent {ref!r} not found")
    return agent


async def _run(ctx: ServerContext, tenant_id: str, run_id: str) -> AgentRunRow:
    run = await ctx.records.run(run_id, tenant_id)
    if run is None:
        raise NotFoundError(f"run {run_id!r} not found")
    return run


async def _out(ctx: ServerContext, run: AgentRunRow, names: dict[str, str] | None = None) -> RunOut:
    """The run's answer; ``names``: agent names already looked up (a list's)."""
    names = {} if names is None else names
    if run.agent_id not in names:
        agent = await ctx.records.agent(run.tenant_id, run.agent_id)
        names[run.agent_id] = agent.name if agent else run.agent_id
    pending = None
    if run.status == "requires_approval":
        waiting = [s for s in await ctx.records.steps(run.id) if s.status == "pending_approval"]
        pending = waiting[0] if waiting else None
    return service.run_out(run, names[run.agent_id], pending)


async def _wait_until_settled(ctx: ServerContext, run: AgentRunRow, seconds: float) -> AgentRunRow:
    deadline = time.monotonic() + seconds
    while run.status not in FINAL_STATUSES and run.status != "requires_approval":
        left = deadline - time.monotonic()
        if left <= 0:
            break
        await service.signals.wait(run.id, min(left, STREAM_POLL), settled=True)
        fresh = await ctx.records.run(run.id)
        assert fresh is not None
        run = fresh
    return run


@router.post(
    "/agents/{agent}/runs",
    status_code=200,
    responses={202: {"description": "background: queued"}, **_SSE},
    response_model=RunOut,
)
async def start(agent: str, body: RunIn, caller: Operator, ctx: Ctx) -> Response:
    found = await _agent(ctx, caller.tenant_id, agent)
    run = await service.start_run(ctx, caller, found, body)
    if body.stream:
        return _stream(ctx, run, after=0)
    if body.background:
        return JSONResponse((await _out(ctx, run)).model_dump(mode="json"), status_code=202)
    run = await _wait_until_settled(ctx, run, body.wait)
    settled = run.status in FINAL_STATUSES or run.status == "requires_approval"
    out = await _out(ctx, run)
    return JSONResponse(out.model_dump(mode="json"), status_code=200 if settled else 202)


@router.get("/agents/{agent}/runs")
async def agent_runs(
    agent: str,
    caller: Caller,
    ctx: Ctx,
    status: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> RunList:
    found = await _agent(ctx, caller.tenant_id, agent)
    return await _list(ctx, caller.tenant_id, agent_id=found.id, status=status, limit=limit)


async def _list(
    ctx: ServerContext,
    tenant_id: str,
    *,
    agent_id: str | None = None,
    thread_id: str | None = None,
    status: str | None = None,
    limit: int = 100,
) -> RunList:
    if status is not None and status not in RUN_STATUSES:
        raise BadRequestError(f"unknown status {status!r}; one of: {', '.join(RUN_STATUSES)}")
    rows = await ctx.records.runs(
        tenant_id,
        agent_id=agent_id,
        thread_id=thread_id,
        statuses=(status,) if status else None,
        limit=limit,
    )
    names: dict[str, str] = {}  # one lookup per agent, not per run
    return RunList(runs=[await _out(ctx, r, names) for r in rows])


@router.get("/runs")
async def list_runs(
    caller: Caller,
    ctx: Ctx,
    agent: Annotated[str | None, Query()] = None,
    thread: Annotated[str | None, Query()] = None,
    status: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> RunList:
    agent_id = (await _agent(ctx, caller.tenant_id, agent)).id if agent else None
    return await _list(
        ctx, caller.tenant_id, agent_id=agent_id, thread_id=thread, status=status, limit=limit
    )


@router.get("/threads/{thread_id}/runs")
async def thread_runs(
    thread_id: str,
    caller: Caller,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> RunList:
    if await ctx.records.thread(caller.tenant_id, thread_id) is None:
        raise NotFoundError(f"thread {thread_id!r} not found")
    return await _list(ctx, caller.tenant_id, thread_id=thread_id, limit=limit)


@router.get("/runs/{run_id}")
async def get_run(run_id: str, caller: Caller, ctx: Ctx) -> RunDetail:
    run = await _run(ctx, caller.tenant_id, run_id)
    out = await _out(ctx, run)
    steps = [service.step_out(s) for s in await ctx.records.steps(run.id)]
    return RunDetail(**out.model_dump(), steps=steps)


@router.get("/runs/{run_id}/files")
async def run_files(run_id: str, caller: Caller, ctx: Ctx) -> list[RunFileOut]:
    """The files the run's sandbox tools kept (what they wrote under /workspace/out)."""
    run = await _run(ctx, caller.tenant_id, run_id)
    return [
        RunFileOut(step=f.step, name=f.name, size=f.size, sha256=f.sha256, created_at=f.created_at)
        for f in await ctx.records.run_files(run.id)
    ]


@router.get(
    "/runs/{run_id}/files/{step}/{name:path}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def run_file(run_id: str, step: int, name: str, caller: Caller, ctx: Ctx) -> Response:
    run = await _run(ctx, caller.tenant_id, run_id)
    found = await ctx.records.run_file(run.id, step, name)
    if found is None:
        raise NotFoundError(f"run {run_id} has no file {name!r} of step {step}")
    filename = re.sub(r"[^A-Za-z0-9._-]", "_", name.rsplit("/", 1)[-1]) or "file"
    return Response(
        found.content,
        media_type="application/octet-stream",  # never rendered: the sandbox wrote it
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-Type-Options": "nosniff",
            "X-Aether-Sha256": found.sha256,
        },
    )


@router.post("/runs/{run_id}/cancel")
async def cancel(run_id: str, caller: Operator, ctx: Ctx) -> RunOut:
    run = await _run(ctx, caller.tenant_id, run_id)
    await service.cancel_run(ctx, run, by=caller.user or f"token:{caller.token_id}")
    return await _out(ctx, await _run(ctx, caller.tenant_id, run_id))


@router.post("/runs/{run_id}/approvals")
async def approvals(run_id: str, body: ApprovalIn, caller: Operator, ctx: Ctx) -> StepOut:
    run = await _run(ctx, caller.tenant_id, run_id)
    return service.step_out(await service.approve(ctx, caller, run, body))


@router.get("/runs/{run_id}/events", response_class=StreamingResponse, responses=_SSE)
async def events(
    run_id: str,
    caller: Caller,
    ctx: Ctx,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> StreamingResponse:
    run = await _run(ctx, caller.tenant_id, run_id)
    start_after = after or 0
    if last_event_id:
        try:
            start_after = int(last_event_id)
        except ValueError:
            raise BadRequestError("Last-Event-ID must be an event's number") from None
    return _stream(ctx, run, after=start_after)


def _stream(ctx: ServerContext, run: AgentRunRow, *, after: int) -> StreamingResponse:
    """The run's events after ``after`` as they come, ending after the final one."""

    async def body() -> AsyncIterator[bytes]:
        seen = after
        yield b": run " + run.id.encode() + b"\n\n"
        idle = 0.0
        ended_for = 0.0
        while True:
            rows = await ctx.records.run_events(run.id, after=seen)
            for row in rows:
                seen = row.seq
                at = row.created_at.replace(tzinfo=UTC).isoformat()
                payload = json.dumps({"seq": row.seq, "type": row.type, "at": at, **row.data})
                yield f"id: {row.seq}\nevent: {row.type}\ndata: {payload}\n\n".encode()
                if row.type in ("run.completed", "run.failed", "run.cancelled", "run.expired"):
                    return
            if rows:
                idle = 0.0
                continue
            fresh = await ctx.records.run(run.id)
            if fresh is None:
                return
            if fresh.status in FINAL_STATUSES:  # its last event is being written: a moment
                ended_for += STREAM_POLL
                if ended_for > 5:
                    return
            await service.signals.wait(run.id, STREAM_POLL)
            idle += STREAM_POLL
            if idle >= 15:  # a comment keeps proxies from closing a quiet stream
                idle = 0.0
                yield b": keep-alive\n\n"

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/agents/{agent}/metrics")
async def agent_metrics(
    agent: str,
    caller: Caller,
    ctx: Ctx,
    seconds: Annotated[float, Query(ge=1, le=60)] = 10.0,
) -> dict[str, float]:
    """Runs/s, steps/s, step latency, tokens/s and cost/s of the agent over the last
    ``seconds`` on this server."""
    found = await _agent(ctx, caller.tenant_id, agent)
    return ctx.metrics.agents.recent(caller.tenant, found.name, seconds)


# -- the node driving a run --


@router.post("/agent-runtime/runs/{run_id}/next")
async def drive(
    run_id: str, body: NextIn, request: Request, caller: NodeCaller, ctx: Ctx
) -> NextOut:
    own_node(request, caller, body.node)
    return await service.drive(ctx, run_id, body)


@router.post("/agent-runtime/runs/{run_id}/steps/{seq}/result", status_code=204)
async def tool_result(
    run_id: str, seq: int, body: ToolResultIn, request: Request, caller: NodeCaller, ctx: Ctx
) -> Response:
    own_node(request, caller, body.node)
    await service.report_tool(ctx, run_id, seq, body)
    return Response(status_code=204)

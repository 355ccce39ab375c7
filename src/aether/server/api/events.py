"""The cluster event stream: ``GET /api/v1/events`` (Server-Sent Events).

Any server serves it: it reads only what every server shares, the state store's
watch (nodes, instances, blueprints, the leader, alerts), the records database
(deployment events, decisions, risk assessments, polled by id) and the task
queue's event log (task state changes, polled by position). The pure
mapping, the filters, who sees what and when a resume is too old are
``core.events``; this module only reads, merges and writes the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import StreamingResponse

from aether.core.events import (
    as_seen_by,
    from_decision,
    from_deployment_event,
    from_risk,
    from_store,
    from_task_event,
    matches,
    parse_filter,
    resolved,
    resume_gap,
    sse,
    unknown_types,
    visible,
)
from aether.errors import BadRequestError
from aether.model.events import EVENT_TYPES, ClusterEvent, Cursor
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Caller
from aether.server.services.event_heads import Heads
from aether.store.base import CompactedError, EventType
from aether.store.records import DEFAULT_TENANT
from aether.store.records.base import epoch

__all__ = ["router"]

router = APIRouter(tags=["events"])
Ctx = Annotated[ServerContext, Depends(get_context)]

PING_SECONDS = 5.0  # a ``: ping`` (with the position) after this long without an event
BATCH = 500  # rows read per record source and poll
_WATCHED = ("nodes/", "instances/", "blueprints/", "leader", "alerts/")

# what goes through the merge queue: (source, position, event or gap message)
_Item = tuple[str, int, ClusterEvent | str | None]


def _advance(cursor: Cursor, source: str, position: int) -> Cursor:
    field = {
        "store": "revision",
        "deployment": "deployment_event",
        "decision": "decision",
        "task": "task",
    }.get(source, "risk")
    return dataclasses.replace(cursor, **{field: position})


def _app_of(key: str) -> str:
    """The app an ``instances/NODE/APP@V/N`` or ``blueprints/APP`` key is about ("": none)."""
    parts = key.split("/")
    if parts[0] == "instances" and len(parts) == 4:
        return parts[2].rpartition("@")[0]
    return parts[1] if parts[0] == "blueprints" and len(parts) == 2 else ""


async def _guarded(work: Awaitable[None], queue: asyncio.Queue[_Item]) -> None:
    """Run a source; if it fails (a store unreachable), end the stream: the client resumes."""
    try:
        await work
    finally:
        with contextlib.suppress(asyncio.QueueFull):  # a full queue: the stream is ending
            queue.put_nowait(("end", 0, None))


async def _current(ctx: ServerContext) -> Cursor:
    heads = await ctx.records.event_heads()
    return Cursor(await ctx.store.revision(), *heads, await ctx.queue.events_head())


async def _pump_store(ctx: ServerContext, start: int, queue: asyncio.Queue[_Item]) -> None:
    """State store changes from revision ``start`` on, mapped; a compaction is a gap."""
    tenants = await ctx.records.app_tenants()
    revision = start
    while True:
        try:
            async for change in ctx.store.watch("", revision):
                key = change.kv.key
                revision = change.kv.mod_revision + 1
                if not key.startswith(_WATCHED):
                    continue
                deleted = change.type is EventType.DELETE
                if deleted and _app_of(key) not in tenants:
                    tenants = await ctx.records.app_tenants()  # an app created since
                event = from_store(
                    change.type.value,
                    key,
                    change.kv.value,
                    version=change.kv.version,
                    ts=time.time(),
                    tenants=tenants,
                )
                await queue.put(("store", change.kv.mod_revision, event))
            return
        except CompactedError as exc:
            now = await ctx.store.revision()
            message = (
                f"the state store discarded its history before revision {exc.compact_revision}: "
                f"changes from revision {revision} to {now} are lost. Re-read the current state; "
                f"events go on from revision {now}"
            )
            await queue.put(("gap", now, message))
            revision = now + 1


async def _poll_records(ctx: ServerContext, start: Cursor, queue: asyncio.Queue[_Item]) -> None:
    """New deployment events, decisions and risk assessments, by id, read when the
    server's shared poll of the newest ids (``ctx.event_heads``) shows one past ours."""
    deployment, decision, risk = start.deployment_event, start.decision, start.risk
    while True:
        full = False
        rows = await ctx.records.deployment_events_after(deployment, BATCH)
        for row in rows:
            event = from_deployment_event(
                row_id=row.event.id,
                step=row.event.type,
                message=row.event.message,
                app=row.app,
                version=row.version,
                deployment_id=row.event.deployment_id,
                tenant=row.tenant_id,
                ts=epoch(row.event.created_at),
            )
            await queue.put(("deployment", row.event.id, event))
            deployment = row.event.id
        full |= len(rows) == BATCH
        decisions = await ctx.records.decisions_after(decision, BATCH)
        for d in decisions:
            await queue.put(
                (
                    "decision",
                    d.id,
                    from_decision(
                        decision_id=d.id,
                        ts=d.ts,
                        layer=d.layer,
                        kind=d.kind,
                        target=d.target,
                        action=d.action,
                        reason=d.reason,
                        outcome=d.outcome,
                        detail=d.detail,
                        tenant=d.tenant_id,
                    ),
                )
            )
            decision = d.id
        full |= len(decisions) == BATCH
        assessments = await ctx.records.risk_after(risk, BATCH)
        for a, previous in assessments:
            risk_event = from_risk(
                node=a.node,
                status=a.status,
                previous=previous,
                confidence=a.confidence,
                root_cause=a.root_cause,
                rule=a.rule,
                ts=a.ts,
            )
            await queue.put(("risk", a.id, risk_event))
            risk = a.id
        full |= len(assessments) == BATCH
        if not full:
            seen = (deployment, decision, risk, None)
            await ctx.event_heads.wait_past(_heads_reader(ctx), seen)


def _heads_reader(ctx: ServerContext) -> Callable[[], Awaitable[Heads]]:
    async def read() -> Heads:
        deployment, decision, risk = await ctx.records.event_heads()
        return deployment, decision, risk, await ctx.queue.events_head()

    return read


async def _poll_tasks(ctx: ServerContext, after: int, queue: asyncio.Queue[_Item]) -> None:
    """Task state changes from the queue's event log, by position, read when the shared
    poll of the newest ids shows one past ours."""
    while True:
        changes = await ctx.queue.events_after(after, BATCH)
        for change in changes:
            await queue.put(("task", change.position, from_task_event(change)))
            after = change.position
        if len(changes) < BATCH:
            await ctx.event_heads.wait_past(_heads_reader(ctx), (None, None, None, after))


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(
    caller: Caller,
    ctx: Ctx,
    type: Annotated[list[str], Query()] = [],  # noqa: B006
    target: Annotated[list[str], Query()] = [],  # noqa: B006
    last_event_id: Annotated[str | None, Query(max_length=100)] = None,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=100)
    ] = None,
) -> StreamingResponse:
    """Server-Sent Events: typed cluster events, filtered by ``type`` and ``target``.

    Every event's ``id`` is the stream's cursor after it; send it back as the
    ``Last-Event-ID`` header (or ``last_event_id``) to resume. The first event is
    ``ready`` (with the cursor the stream starts from) or, when the requested
    cursor is too old or unknown, ``gap`` saying so.
    """
    types = parse_filter(type)
    if types is not None and (bad := unknown_types(types)):
        raise BadRequestError(f"unknown event type {bad[0]!r}; one of: {', '.join(EVENT_TYPES)}")
    targets = parse_filter(target)
    if len(target) > 64 or (targets is not None and len(targets) > 64):
        raise BadRequestError("at most 64 targets")
    if targets is not None and any(len(t) > 255 for t in targets):
        raise BadRequestError(
            "a target is a node id, app name or instance key of at most 255 characters"
        )
    asked_text = last_event_id if last_event_id is not None else last_event_id_header
    asked: Cursor | None = None
    if asked_text is not None and asked_text.strip():
        asked = Cursor.parse(asked_text)
        if asked is None:
            raise BadRequestError(
                f"Last-Event-ID {asked_text[:80]!r} is not an event id of this stream "
                "(REVISION-DEPLOYMENT_EVENT-DECISION-RISK-TASK, e.g. 120-4-0-2-7)"
            )
    current = await _current(ctx)
    gap = resume_gap(asked, current, ctx.settings.events_resume_limit) if asked else None
    start = resolved(asked, current) if asked is not None and gap is None else current
    cluster_admin = caller.role == "admin" and caller.tenant == DEFAULT_TENANT

    async def stream() -> AsyncIterator[bytes]:
        cursor = start
        yield b"retry: 1000\n\n"
        if gap is not None:
            yield sse("gap", str(cursor), {"id": str(cursor), "type": "gap", "message": gap})
        else:
            first = {"id": str(cursor), "type": "ready", "resumed": asked is not None}
            yield sse("ready", str(cursor), first)
        queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=10_000)
        tasks = [
            asyncio.create_task(_guarded(_pump_store(ctx, start.revision + 1, queue), queue)),
            asyncio.create_task(_guarded(_poll_records(ctx, start, queue), queue)),
            asyncio.create_task(_guarded(_poll_tasks(ctx, start.task or 0, queue), queue)),
        ]
        try:
            while True:
                try:
                    async with asyncio.timeout(PING_SECONDS):
                        source, position, item = await queue.get()
                except TimeoutError:
                    # the position moves past events this caller does not get: an id-only
                    # message carries it, so a resume need not replay them
                    yield f"id: {cursor}\n: ping\n\n".encode()
                    continue
                if source == "end":
                    return
                if source == "gap":
                    cursor = dataclasses.replace(cursor, revision=position)
                    yield sse(
                        "gap", str(cursor), {"id": str(cursor), "type": "gap", "message": item}
                    )
                    continue
                cursor = _advance(cursor, source, position)
                if not isinstance(item, ClusterEvent):
                    continue
                if not visible(
                    item,
                    caller.tenant_id,
                    cluster_admin=cluster_admin,
                    cluster_operator=caller.cluster_operator,
                ):
                    continue
                item = as_seen_by(item, caller.tenant)
                if not matches(item, types, targets):
                    continue
                yield sse(item.type, str(cursor), item.wire(str(cursor)))
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

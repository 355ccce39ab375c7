"""Agents' memory: ``/memory`` (write, list, search, delete), one tenant's at a time.

``agent_id`` names one of the tenant's agents (another tenant's, or none, is a 404 with
the same message); ``thread_id`` is the caller's own label. Another tenant's memories are
never listed nor found (a 404 to delete, as for one that does not exist).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from aether.errors import NotFoundError
from aether.model.memory import (
    MEMORY_ID_PATTERN,
    MemoryDeletedOut,
    MemoryHitOut,
    MemoryIn,
    MemoryOut,
    MemoryPageOut,
    SearchMode,
)
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Caller, Operator
from aether.server.services.memory import embedder, hit_out, item_out, store

__all__ = ["router"]

router = APIRouter(tags=["memory"])
Ctx = Annotated[ServerContext, Depends(get_context)]
AgentId = Annotated[str, Query(pattern=MEMORY_ID_PATTERN)]
ThreadId = Annotated[str | None, Query(pattern=MEMORY_ID_PATTERN)]


async def _own_agent(ctx: ServerContext, tenant_id: str, agent_id: str) -> None:
    if await ctx.records.agent(tenant_id, agent_id) is None:
        raise NotFoundError(f"agent {agent_id!r} not found")


@router.post("/memory", status_code=201)
async def write_memory(body: MemoryIn, caller: Operator, ctx: Ctx) -> MemoryOut:
    """Keep a memory of the agent (the thread's, or shared by its threads)."""
    await _own_agent(ctx, caller.tenant_id, body.agent_id)
    async with embedder(ctx, caller.tenant_id, body.embedding_model) as embed:
        item = await store(ctx).write(
            caller.tenant_id,
            body.agent_id,
            body.thread_id,
            body.text,
            body.metadata,
            embedder=embed,
        )
    return item_out(item)


@router.get("/memory")
async def list_memory(
    caller: Caller,
    ctx: Ctx,
    agent_id: AgentId,
    thread_id: ThreadId = None,
    before: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MemoryPageOut:
    """Newest first, ``limit`` at a time: the thread's and the agent's shared memories
    (the shared ones only without ``thread_id``); ``before=cursor`` for older ones."""
    await _own_agent(ctx, caller.tenant_id, agent_id)
    page = await store(ctx).list_items(
        caller.tenant_id, agent_id, thread_id, before=before, limit=limit
    )
    return MemoryPageOut(items=[item_out(i) for i in page.items], cursor=page.cursor)


@router.get("/memory/search")
async def search_memory(
    caller: Caller,
    ctx: Ctx,
    agent_id: AgentId,
    q: Annotated[str, Query(min_length=1, max_length=2000)],
    thread_id: ThreadId = None,
    mode: SearchMode = "text",
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    embedding_model: Annotated[str | None, Query(max_length=63)] = None,
) -> list[MemoryHitOut]:
    """Best first. ``vector`` needs an embedding model (400 without one); ``hybrid``
    without one is ``text``."""
    await _own_agent(ctx, caller.tenant_id, agent_id)
    async with embedder(ctx, caller.tenant_id, embedding_model) as embed:
        hits = await store(ctx).search(
            caller.tenant_id, agent_id, q, thread_id, limit=limit, mode=mode, embedder=embed
        )
    return [hit_out(h.item, h.score, h.text_score, h.vector_score) for h in hits]


@router.delete("/memory/{memory_id}")
async def delete_memory(memory_id: str, caller: Operator, ctx: Ctx) -> MemoryDeletedOut:
    if not await store(ctx).delete(caller.tenant_id, memory_id):
        raise NotFoundError(f"memory {memory_id!r} not found")
    return MemoryDeletedOut(id=memory_id)

"""Agent memory as the server uses it: the records database's memory store, and the
embedder a request asks for (``embedding_model=NAME``, else the server's
``memory_embedding_model``), a model of the caller's tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aether.agents.llm import ModelClient
from aether.agents.memory import MemoryItem, MemoryStore, ModelEmbedder, memory_store
from aether.model.memory import MemoryHitOut, MemoryOut
from aether.server.context import ServerContext
from aether.server.services.models import catalog_row, model_endpoint
from aether.store.records.schema import AgentModel

__all__ = ["embedder", "hit_out", "item_out", "store"]

EMBED_TIMEOUT = 30.0  # seconds per /v1/embeddings call


def store(ctx: ServerContext) -> MemoryStore:
    return memory_store(ctx.records.sessions)


@asynccontextmanager
async def embedder(
    ctx: ServerContext, tenant_id: str, name: str | None
) -> AsyncIterator[ModelEmbedder | None]:
    """The tenant's model ``name`` as an embedder (a named model the tenant lacks is a
    404); without a name the server's default, or None when it has none or the tenant
    has no model of that name."""
    row: AgentModel | None = None
    if name:
        row = await catalog_row(ctx, tenant_id, name)
    elif ctx.settings.memory_embedding_model:
        row = await ctx.records.get_model(tenant_id, ctx.settings.memory_embedding_model)
    if row is None:
        yield None
        return
    async with ModelClient(model_endpoint(ctx, row, timeout=EMBED_TIMEOUT)) as client:
        yield ModelEmbedder(client)


def item_out(item: MemoryItem) -> MemoryOut:
    return MemoryOut(
        id=item.id,
        agent_id=item.agent_id,
        thread_id=item.thread_id,
        text=item.text,
        metadata=item.metadata,
        embedded=item.embedding_model is not None,
        created_at=item.created_at,
    )


def hit_out(
    item: MemoryItem, score: float, text: float | None, vector: float | None
) -> MemoryHitOut:
    return MemoryHitOut(
        **item_out(item).model_dump(), score=score, text_score=text, vector_score=vector
    )

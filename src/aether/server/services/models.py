"""A tenant's model endpoints as the server uses them: a catalog row and its unsealed key
make a :class:`aether.agents.llm.ModelEndpoint`; a test call measures one tiny chat."""

from __future__ import annotations

import time

from aether.agents.llm import ModelClient, ModelEndpoint
from aether.errors import NotFoundError
from aether.model.agents import ModelIn, ModelOut, ModelTestOut, TokenUsage, model_ref
from aether.server.context import ServerContext
from aether.store.records.models import NewModel
from aether.store.records.schema import AgentModel

__all__ = ["TEST_PROMPT", "catalog_row", "model_endpoint", "model_out", "new_model", "test_model"]

TEST_PROMPT = "Reply with the single word OK."
REPLY_CHARS = 200  # of the test call's reply, in its answer
TEST_TIMEOUT = 30.0  # seconds the test call waits for the provider


def model_out(row: AgentModel) -> ModelOut:
    return ModelOut(
        name=row.name,
        ref=model_ref(row.name),
        provider=row.provider,
        base_url=row.base_url,
        model_id=row.model_id,
        context_window=row.context_window,
        price_in_per_1k=row.price_in_per_1k,
        price_out_per_1k=row.price_out_per_1k,
        api_key_set=row.api_key is not None,
        created_at=row.created_at,
    )


def new_model(ctx: ServerContext, body: ModelIn) -> NewModel:
    """What to store of ``body``: everything, the API key sealed."""
    key = body.api_key.get_secret_value() if body.api_key is not None else None
    return NewModel(
        name=body.name,
        provider=body.provider,
        base_url=body.base_url,
        model_id=body.model_id,
        context_window=body.context_window,
        price_in_per_1k=body.price_in_per_1k,
        price_out_per_1k=body.price_out_per_1k,
        api_key=ctx.secrets.seal(key) if key else None,
    )


async def catalog_row(ctx: ServerContext, tenant_id: str, name: str) -> AgentModel:
    """The tenant's model ``name``; another tenant's is as absent as an unknown one."""
    row = await ctx.records.get_model(tenant_id, name)
    if row is None:
        raise NotFoundError(f"model {name!r} not found")
    return row


def model_endpoint(ctx: ServerContext, row: AgentModel, *, timeout: float = 60.0) -> ModelEndpoint:
    """How to call the model: its URL, its id and its key, unsealed, behind the egress
    guard (a base URL at a loopback, link-local or private address is refused with 403
    ``egress_denied`` unless ``AETHER_EGRESS_ALLOW`` covers it)."""
    key = ctx.secrets.unseal(row.api_key) if row.api_key is not None else None
    return ModelEndpoint(
        name=row.name,
        base_url=row.base_url,
        model_id=row.model_id,
        api_key=key,
        timeout=timeout,
        allow_private=tuple(ctx.settings.egress_allow),
    )


async def test_model(ctx: ServerContext, row: AgentModel) -> ModelTestOut:
    """One tiny chat call; a provider's failure raises its BadGatewayError, a base URL
    the egress guard refuses EgressDeniedError."""
    endpoint = model_endpoint(ctx, row, timeout=TEST_TIMEOUT)
    started = time.monotonic()
    async with ModelClient(endpoint) as client:
        result = await client.chat([{"role": "user", "content": TEST_PROMPT}], max_tokens=16)
    usage = result.usage
    return ModelTestOut(
        name=row.name,
        ref=model_ref(row.name),
        latency_ms=round((time.monotonic() - started) * 1000, 1),
        usage=TokenUsage(
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
        )
        if usage
        else None,
        reply=result.content[:REPLY_CHARS],
        finish_reason=result.finish_reason,
    )

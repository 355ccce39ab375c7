"""A tenant's catalog of model endpoints for AI agents: ``/models`` (``model://NAME``).

Viewers list and read, admins add and remove, operators test (one tiny chat call).
Answers carry ``api_key_set``, never the key; another tenant's model is a 404.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from aether.errors import NotFoundError
from aether.model.agents import ModelDeletedOut, ModelIn, ModelOut, ModelTestOut, model_ref
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Admin, Caller, Operator
from aether.server.services.models import catalog_row, model_out, new_model, test_model

__all__ = ["router"]

router = APIRouter(tags=["models"])
Ctx = Annotated[ServerContext, Depends(get_context)]
_PROVIDER_FAILED: dict[int | str, dict[str, Any]] = {
    502: {"description": "the provider failed: a model_* code says how"}
}


@router.get("/models")
async def list_models(caller: Caller, ctx: Ctx) -> list[ModelOut]:
    return [model_out(row) for row in await ctx.records.list_models(caller.tenant_id)]


@router.post("/models", status_code=201)
async def add_model(body: ModelIn, caller: Admin, ctx: Ctx) -> ModelOut:
    """Add a model to the tenant's catalog; its API key is stored encrypted."""
    row = await ctx.records.add_model(caller.tenant_id, new_model(ctx, body))
    return model_out(row)


@router.get("/models/{name}")
async def get_model(name: str, caller: Caller, ctx: Ctx) -> ModelOut:
    return model_out(await catalog_row(ctx, caller.tenant_id, name))


@router.delete("/models/{name}")
async def delete_model(name: str, caller: Admin, ctx: Ctx) -> ModelDeletedOut:
    if not await ctx.records.delete_model(caller.tenant_id, name):
        raise NotFoundError(f"model {name!r} not found")
    return ModelDeletedOut(name=name, ref=model_ref(name))


@router.post("/models/{name}/test", responses=_PROVIDER_FAILED)
async def test(name: str, caller: Operator, ctx: Ctx) -> ModelTestOut:
    """One tiny chat call through the model: latency, usage and the reply's start, or
    the provider's failure (502 with a ``model_*`` code)."""
    return await test_model(ctx, await catalog_row(ctx, caller.tenant_id, name))

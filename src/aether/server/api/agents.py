"""AI agents and the agent catalog (issue 17).

``/agent-catalog``: recipes to start from (the built-ins and the tenant's own; admins
add and delete the tenant's). ``/agents``: create (from a body or a recipe), list,
read, patch (a new version of the config), versions, disable and enable, export as an
agent file (no secrets) and import one, deploy (``replicas`` on nodes the leader
picks, pinning a version) and undeploy. ``{agent_id}`` is the agent's id (``agt_…``)
or its name (names never start with ``agt_``).

A model, policy or tool an agent names that the tenant lacks is 404 ``invalid_input``
(``model not found``, ``policy not found``, ``tool not found``); another tenant's
agent or recipe is a 404 as an unknown one. ``/api/agents…`` and
``/api/agent-catalog…`` are aliases of these (``http/aliases.py``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from aether.agents.catalog import BUILTIN_RECIPES, AgentSpec, Recipe
from aether.errors import BadRequestError, ConflictError, InternalError, NotFoundError
from aether.server.context import ServerContext, get_context
from aether.server.http.audit import name_event
from aether.server.http.auth import Admin, Caller, Operator
from aether.server.services.agent_placements import (
    read_placement,
    read_placements,
    withdraw_placement,
)
from aether.server.services.agents import (
    AgentFile,
    AgentName,
    AgentOut,
    RecipeOut,
    VersionOut,
    agent_file,
    agent_out,
    author,
    check_refs,
    deployment_out,
    find_recipe,
    import_agent,
    list_recipes,
    spec_of_request,
    version_of,
    version_out,
)
from aether.store.records.schema import AgentRow, AgentVersionRow

__all__ = ["router"]

router = APIRouter(tags=["agents"])
Ctx = Annotated[ServerContext, Depends(get_context)]
_INVALID_INPUT: dict[int | str, dict[str, Any]] = {
    404: {"description": "`invalid_input`: a model, policy or tool it names is not the tenant's"}
}


class AgentIn(BaseModel):
    """A new agent: its fields, or a recipe and the fields the recipe leaves open."""

    model_config = ConfigDict(extra="forbid")

    name: AgentName
    recipe: str | None = None
    model: str | None = None
    policy_ids: list[str] | None = None
    tool_ids: list[str] | None = None
    system_prompt: str | None = None
    config: dict[str, Any] | None = None


class AgentPatch(BaseModel):
    """The fields to change: the result is a new version."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    policy_ids: list[str] | None = None
    tool_ids: list[str] | None = None
    system_prompt: str | None = None
    config: dict[str, Any] | None = None


class DeployIn(BaseModel):
    """How many replicas, of which version (default: the version in use now)."""

    model_config = ConfigDict(extra="forbid")

    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    version: Annotated[int, Field(ge=1)] | None = None


class AgentList(BaseModel):
    agents: list[AgentOut]
    cursor: str | None  # the last name of a full page: pass it as ``after``


# -- the catalog --


@router.get("/agent-catalog")
async def catalog(caller: Caller, ctx: Ctx) -> list[RecipeOut]:
    """The built-in recipes, then the tenant's own."""
    return await list_recipes(ctx, caller.tenant_id)


@router.get("/agent-catalog/{recipe_id}")
async def get_recipe(recipe_id: str, caller: Caller, ctx: Ctx) -> RecipeOut:
    return await find_recipe(ctx, caller.tenant_id, recipe_id)


@router.post("/agent-catalog", status_code=201, responses=_INVALID_INPUT)
async def add_recipe(body: Recipe, caller: Admin, ctx: Ctx) -> RecipeOut:
    if body.id in BUILTIN_RECIPES:
        raise ConflictError(f"recipe {body.id!r} is built in: choose another id")
    # what a recipe fixes must be the tenant's too (a model left open is checked later)
    fixed = AgentSpec(
        model=body.model or "model://open", policy_ids=body.policy_ids, tool_ids=body.tool_ids
    )
    await check_refs(ctx, caller.tenant_id, fixed, model=body.model is not None)
    definition = body.model_dump(mode="json")
    if not await ctx.records.add_agent_recipe(caller.tenant_id, body.id, definition):
        raise ConflictError(f"recipe {body.id!r} already exists")
    return RecipeOut(**body.model_dump(), builtin=False)


@router.delete("/agent-catalog/{recipe_id}", status_code=204)
async def delete_recipe(recipe_id: str, caller: Admin, ctx: Ctx) -> Response:
    if recipe_id in BUILTIN_RECIPES:
        raise ConflictError(f"recipe {recipe_id!r} is built in and cannot be deleted")
    if not await ctx.records.delete_agent_recipe(caller.tenant_id, recipe_id):
        raise NotFoundError(f"recipe {recipe_id!r} not found")
    return Response(status_code=204)


# -- agents --


async def _agent(ctx: ServerContext, tenant_id: str, agent_id: str) -> AgentRow:
    agent = await ctx.records.agent(tenant_id, agent_id)
    if agent is None:
        raise NotFoundError(f"agent {agent_id!r} not found")
    return agent


async def _in_use(ctx: ServerContext, agent: AgentRow) -> AgentVersionRow:
    version = await ctx.records.agent_version(agent.id, agent.current_version)
    if version is None:  # written in one transaction with the agent: cannot happen
        raise InternalError(f"agent {agent.id!r} has no version {agent.current_version}")
    return version


async def _shown(
    ctx: ServerContext, agent: AgentRow, version: AgentVersionRow | None = None
) -> AgentOut:
    """The answer for ``agent``: its version in use and, deployed, its deployment."""
    version = version or await _in_use(ctx, agent)
    row = await ctx.records.agent_deployment(agent.id)
    if row is None:
        return agent_out(agent, version)
    placement = await read_placement(ctx.store, agent.id)
    return agent_out(agent, version, deployment_out(row, placement))


@router.get("/agents")
async def list_agents(
    caller: Caller,
    ctx: Ctx,
    status: Annotated[str | None, Query(pattern="^(created|deployed|disabled)$")] = None,
    name: Annotated[str | None, Query(max_length=63)] = None,
    after: Annotated[str | None, Query(max_length=63)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AgentList:
    """The tenant's agents by name, ``limit`` at a time (``after=cursor`` for more)."""
    rows = await ctx.records.agents(
        caller.tenant_id, status=status, name=name, after=after, limit=limit
    )
    cursor = rows[-1][0].name if len(rows) == limit else None
    placements = await read_placements(ctx.store) if rows else {}
    shown = []
    for agent, version in rows:
        row = await ctx.records.agent_deployment(agent.id) if agent.status == "deployed" else None
        deployment = None if row is None else deployment_out(row, placements.get(agent.id))
        shown.append(agent_out(agent, version, deployment))
    return AgentList(agents=shown, cursor=cursor)


@router.post("/agents", status_code=201, responses=_INVALID_INPUT)
async def create_agent(body: AgentIn, caller: Operator, ctx: Ctx) -> AgentOut:
    """Create an agent at version 1 (status ``created``, no deployment)."""
    given = body.model_dump(exclude={"name", "recipe"})
    spec = await spec_of_request(ctx, caller.tenant_id, body.recipe, given)
    await check_refs(ctx, caller.tenant_id, spec)
    agent, version = await ctx.records.add_agent(
        caller.tenant_id, body.name, version_of(spec), author(caller)
    )
    return agent_out(agent, version)


@router.post("/agents/import", status_code=201, responses=_INVALID_INPUT)
async def import_agent_file(body: AgentFile, caller: Operator, ctx: Ctx) -> AgentOut:
    """Create the agent of an agent file, and the tools and policies it carries that
    the tenant lacks."""
    agent, version = await import_agent(ctx, caller, body)
    return agent_out(agent, version)


@router.get("/agents/{agent_id}")
async def get_agent(agent_id: str, caller: Caller, ctx: Ctx) -> AgentOut:
    agent = await _agent(ctx, caller.tenant_id, agent_id)
    return await _shown(ctx, agent)


@router.patch("/agents/{agent_id}", responses=_INVALID_INPUT)
async def patch_agent(agent_id: str, body: AgentPatch, caller: Operator, ctx: Ctx) -> AgentOut:
    """Change the agent's config: a new version, checked as on create."""
    changes = body.model_dump(exclude_none=True)
    if not changes:
        raise BadRequestError(
            "nothing to change: give model, policy_ids, tool_ids, system_prompt or config"
        )
    agent = await _agent(ctx, caller.tenant_id, agent_id)
    current = version_out(await _in_use(ctx, agent)).model_dump(
        include={"model", "policy_ids", "tool_ids", "system_prompt", "config"}
    )
    spec = await spec_of_request(ctx, caller.tenant_id, None, {**current, **changes})
    await check_refs(ctx, caller.tenant_id, spec)
    changed = await ctx.records.add_agent_version(
        caller.tenant_id, agent_id, version_of(spec), author(caller)
    )
    if changed is None:
        raise NotFoundError(f"agent {agent_id!r} not found")
    return await _shown(ctx, *changed)


@router.get("/agents/{agent_id}/versions")
async def versions(agent_id: str, caller: Caller, ctx: Ctx) -> list[VersionOut]:
    """Every version of the agent's config, newest first."""
    agent = await _agent(ctx, caller.tenant_id, agent_id)
    return [version_out(v) for v in await ctx.records.agent_versions(caller.tenant_id, agent.id)]


async def _set_status(ctx: ServerContext, tenant_id: str, agent_id: str, status: str) -> AgentOut:
    agent = await ctx.records.set_agent_status(tenant_id, agent_id, status)
    if agent is None:
        raise NotFoundError(f"agent {agent_id!r} not found")
    if status == "disabled":
        await withdraw_placement(ctx.store, agent.id)
    return await _shown(ctx, agent)


@router.post("/agents/{agent_id}/disable")
async def disable(agent_id: str, caller: Operator, ctx: Ctx) -> AgentOut:
    """Status ``disabled``: no new runs (``agent_disabled``), and its deployment is
    dropped: no node claims its queue, no router serves it. Again: no change."""
    return await _set_status(ctx, caller.tenant_id, agent_id, "disabled")


@router.post("/agents/{agent_id}/enable")
async def enable(agent_id: str, caller: Operator, ctx: Ctx) -> AgentOut:
    """A disabled agent back to status ``created`` (deploy it again to serve it).
    Any other status: no change."""
    return await _set_status(ctx, caller.tenant_id, agent_id, "created")


@router.post("/agents/{agent_id}/deploy")
async def deploy(
    agent_id: str,
    request: Request,
    caller: Operator,
    ctx: Ctx,
    body: Annotated[DeployIn | None, Body()] = None,
) -> AgentOut:
    """Deploy (or redeploy) the agent: ``replicas`` on distinct nodes the leader picks,
    pinning ``version`` (default: the version in use). A disabled agent is a 409
    ``agent_disabled``; a version it does not have is a 400."""
    name_event(request, "agent.deploy")
    body = body or DeployIn()  # no body: one replica of the version in use
    agent = await _agent(ctx, caller.tenant_id, agent_id)
    version = body.version or agent.current_version
    if await ctx.records.agent_version(agent.id, version) is None:
        raise BadRequestError(
            f"agent {agent.name!r} has no version {version} (it has 1 to {agent.current_version})"
        )
    name_event(request, "agent.deploy", f"version {version}, {body.replicas} replica(s)")
    deployed = await ctx.records.deploy_agent(
        caller.tenant_id, agent.id, version, body.replicas, author(caller)
    )
    if deployed is None:
        raise NotFoundError(f"agent {agent_id!r} not found")
    return await _shown(ctx, deployed[0])


@router.delete("/agents/{agent_id}/deploy")
async def undeploy(agent_id: str, request: Request, caller: Operator, ctx: Ctx) -> AgentOut:
    """Drop the agent's deployment: its replicas are withdrawn at once, status back to
    ``created``. Not deployed: no change."""
    name_event(request, "agent.undeploy")
    agent = await ctx.records.undeploy_agent(caller.tenant_id, agent_id)
    if agent is None:
        raise NotFoundError(f"agent {agent_id!r} not found")
    await withdraw_placement(ctx.store, agent.id)
    return await _shown(ctx, agent)


@router.get("/agents/{agent_id}/export")
async def export(agent_id: str, caller: Caller, ctx: Ctx) -> AgentFile:
    """The agent file of the version in use: no secret, the model only named."""
    agent = await _agent(ctx, caller.tenant_id, agent_id)
    return await agent_file(ctx, agent, await _in_use(ctx, agent))

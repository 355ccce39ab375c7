"""A tenant's AI agents: what the agents and catalog routes share.

The catalog (built-in recipes merged with the tenant's own), checking what an agent
names (its model, policies and tools must be the tenant's: else 404 ``invalid_input``),
the answers, and the agent file (export without secrets, import).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aether.agents.catalog import (
    AGENT_NAME_PATTERN,
    BUILTIN_RECIPES,
    AgentSpec,
    Recipe,
    missing_open_fields,
    spec_from_recipe,
)
from aether.agents.policy import Policy
from aether.agents.tools import BUILTIN_TOOLS, Tool
from aether.core.agent_placement import DeploymentStatus, deployment_status
from aether.errors import BadRequestError, ConflictError, InternalError, NotFoundError
from aether.model.placements import AgentPlacement
from aether.model.time import Timestamp
from aether.server.context import ServerContext
from aether.server.services.agent_policies import BUILTIN_POLICIES, find_tool
from aether.store.records.agents import AgentVersion
from aether.store.records.base import Principal
from aether.store.records.schema import AgentDeploymentRow, AgentRow, AgentVersionRow

__all__ = [
    "AgentFile",
    "AgentName",
    "AgentOut",
    "DeploymentOut",
    "RecipeOut",
    "VersionOut",
    "agent_file",
    "agent_out",
    "author",
    "check_refs",
    "deployment_out",
    "find_recipe",
    "import_agent",
    "list_recipes",
    "spec_of_request",
    "version_of",
    "version_out",
]

AgentName = Annotated[str, Field(pattern=AGENT_NAME_PATTERN)]


class RecipeOut(Recipe):
    builtin: bool


class DeploymentOut(BaseModel):
    """A deployed agent's deployment: the version it pins, the replicas it wants, the
    nodes the leader placed them on (``pending``: none yet; ``running``: all;
    ``degraded``: fewer than ``replicas``)."""

    version: int
    replicas: int
    nodes: list[str]
    status: DeploymentStatus
    deployed_at: Timestamp


class AgentOut(BaseModel):
    id: str
    name: str
    status: str  # created | deployed | disabled
    deployment: DeploymentOut | None = None  # None: not deployed
    model: str
    policy_ids: list[str]
    tool_ids: list[str]
    system_prompt: str
    config: dict[str, Any]
    version: int
    created_at: Timestamp
    updated_at: Timestamp
    disabled_at: Timestamp | None


class VersionOut(BaseModel):
    version: int
    model: str
    policy_ids: list[str]
    tool_ids: list[str]
    system_prompt: str
    config: dict[str, Any]
    created_at: Timestamp
    created_by: str


class AgentFile(BaseModel):
    """An agent as a file: its config and the tenant's own tools and policies it uses;
    never a secret (a model is only named, a tool's headers name secrets)."""

    model_config = ConfigDict(extra="forbid")

    aether_agent: Literal[1]
    name: AgentName
    model: str
    policy_ids: list[str] = Field(default_factory=list)
    tool_ids: list[str] = Field(default_factory=list)
    system_prompt: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    tools: list[Tool] = Field(default_factory=list, max_length=64)
    policies: list[Policy] = Field(default_factory=list, max_length=64)


def author(caller: Principal) -> str:
    """Who made a version: the account, else the token."""
    return caller.user or f"token:{caller.token_id}"


def deployment_out(row: AgentDeploymentRow, placement: AgentPlacement | None) -> DeploymentOut:
    """The deployment of ``row``, placed as ``placement`` says (None: not yet)."""
    nodes = [] if placement is None else list(placement.nodes)
    status = deployment_status(row.replicas, len(nodes))
    return DeploymentOut(
        version=row.version,
        replicas=row.replicas,
        nodes=nodes,
        status=status,
        deployed_at=row.deployed_at,
    )


def agent_out(
    agent: AgentRow, version: AgentVersionRow, deployment: DeploymentOut | None = None
) -> AgentOut:
    return AgentOut(
        id=agent.id,
        name=agent.name,
        status=agent.status,
        deployment=deployment,
        model=version.model,
        policy_ids=version.policy_ids,
        tool_ids=version.tool_ids,
        system_prompt=version.system_prompt,
        config=version.config,
        version=version.version,
        created_at=agent.created_at,
        updated_at=agent.updated_at,
        disabled_at=agent.disabled_at,
    )


def version_out(row: AgentVersionRow) -> VersionOut:
    return VersionOut(
        version=row.version,
        model=row.model,
        policy_ids=row.policy_ids,
        tool_ids=row.tool_ids,
        system_prompt=row.system_prompt,
        config=row.config,
        created_at=row.created_at,
        created_by=row.created_by,
    )


def version_of(spec: AgentSpec) -> AgentVersion:
    return AgentVersion(
        model=spec.model,
        policy_ids=spec.policy_ids,
        tool_ids=spec.tool_ids,
        system_prompt=spec.system_prompt,
        config=spec.config,
    )


def _recipe_of(definition: dict[str, Any]) -> Recipe:
    try:
        return Recipe.model_validate(definition)
    except ValidationError as exc:  # a row written by an older, laxer version
        raise InternalError(f"a stored recipe no longer validates: {exc}") from exc


async def list_recipes(ctx: ServerContext, tenant_id: str) -> list[RecipeOut]:
    """The built-in recipes, then the tenant's own."""
    builtin = [RecipeOut(**r.model_dump(), builtin=True) for r in BUILTIN_RECIPES.values()]
    rows = await ctx.records.agent_recipes(tenant_id)
    own = [RecipeOut(**_recipe_of(r.definition).model_dump(), builtin=False) for r in rows]
    return builtin + own


async def find_recipe(ctx: ServerContext, tenant_id: str, recipe_id: str) -> RecipeOut:
    """The recipe, or 404 (another tenant's is no different from none)."""
    builtin = BUILTIN_RECIPES.get(recipe_id)
    if builtin is not None:
        return RecipeOut(**builtin.model_dump(), builtin=True)
    row = await ctx.records.agent_recipe(tenant_id, recipe_id)
    if row is None:
        raise NotFoundError(f"recipe {recipe_id!r} not found")
    return RecipeOut(**_recipe_of(row.definition).model_dump(), builtin=False)


def _spec(fields: dict[str, Any]) -> AgentSpec:
    """The spec of ``fields``, or 400 naming the fields that are wrong."""
    try:
        return AgentSpec.model_validate(fields)
    except ValidationError as exc:
        problem = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise BadRequestError(f"invalid agent: {problem}") from None


async def spec_of_request(
    ctx: ServerContext, tenant_id: str, recipe_id: str | None, given: dict[str, Any]
) -> AgentSpec:
    """The spec an agent is created with: ``given``, or a recipe completed by it
    (every field the recipe leaves open must be given: else 400 naming them)."""
    if recipe_id is None:
        return _spec({k: v for k, v in given.items() if v is not None})
    try:
        recipe = await find_recipe(ctx, tenant_id, recipe_id)
    except NotFoundError:
        raise NotFoundError("recipe not found", code="invalid_input") from None
    missing = missing_open_fields(recipe, given)
    if missing:
        raise BadRequestError(
            f"recipe {recipe.id!r} leaves open: {', '.join(missing)} (give them too)"
        )
    return _spec(spec_from_recipe(recipe, given))


def _invalid(what: str) -> NotFoundError:
    return NotFoundError(f"{what} not found", code="invalid_input")


async def check_refs(
    ctx: ServerContext,
    tenant_id: str,
    spec: AgentSpec,
    *,
    carried_tools: frozenset[str] = frozenset(),
    carried_policies: frozenset[str] = frozenset(),
    model: bool = True,
) -> None:
    """Each model, policy and tool ``spec`` names is the tenant's (or built in, or
    ``carried`` by an agent file being imported): else 404 ``invalid_input``. With
    ``model=False`` the model is not checked (a recipe that leaves it open)."""
    name = spec.model.removeprefix("model://")
    if model and await ctx.records.get_model(tenant_id, name) is None:
        raise _invalid("model")
    for policy_id in spec.policy_ids:
        if policy_id in BUILTIN_POLICIES or policy_id in carried_policies:
            continue
        if await ctx.records.agent_policy(tenant_id, policy_id) is None:
            raise _invalid("policy")
    for tool_id in spec.tool_ids:
        if tool_id not in carried_tools and await find_tool(ctx, tenant_id, tool_id) is None:
            raise _invalid("tool")


async def agent_file(ctx: ServerContext, agent: AgentRow, version: AgentVersionRow) -> AgentFile:
    """The agent file of ``version``: the tenant's own tools and policies it uses are
    carried whole (built-ins are not: every tenant has them)."""
    tenant_id = agent.tenant_id
    tools = []
    for tool_id in version.tool_ids:
        row = await ctx.records.agent_tool(tenant_id, tool_id)
        if row is not None and tool_id not in BUILTIN_TOOLS:
            tools.append(Tool.model_validate(row.definition))
    policies = []
    for policy_id in version.policy_ids:
        policy_row = await ctx.records.agent_policy(tenant_id, policy_id)
        if policy_row is not None and policy_id not in BUILTIN_POLICIES:
            policies.append(Policy.model_validate(policy_row.definition))
    return AgentFile(
        aether_agent=1,
        name=agent.name,
        model=version.model,
        policy_ids=version.policy_ids,
        tool_ids=version.tool_ids,
        system_prompt=version.system_prompt,
        config=version.config,
        tools=tools,
        policies=policies,
    )


async def import_agent(
    ctx: ServerContext, caller: Principal, document: AgentFile
) -> tuple[AgentRow, AgentVersionRow]:
    """Create the agent of ``document`` and the tools and policies it carries that the
    tenant lacks (those it has are kept as they are). Nothing is written when a name
    is taken or something the agent names is missing."""
    tenant_id = caller.tenant_id
    fields = document.model_dump(include={"model", "policy_ids", "tool_ids"})
    spec = _spec({**fields, "system_prompt": document.system_prompt, "config": document.config})
    for tool in document.tools:
        if tool.id in BUILTIN_TOOLS:
            raise BadRequestError(f"the file carries a tool with a built-in id: {tool.id!r}")
    for policy in document.policies:
        if policy.id in BUILTIN_POLICIES:
            raise BadRequestError(f"the file carries a built-in policy: {policy.id!r}")
    await check_refs(
        ctx,
        tenant_id,
        spec,
        carried_tools=frozenset(t.id for t in document.tools),
        carried_policies=frozenset(p.id for p in document.policies),
    )
    if await ctx.records.agents(tenant_id, name=document.name):
        raise ConflictError(f"agent {document.name!r} already exists")
    for tool in document.tools:
        if await ctx.records.agent_tool(tenant_id, tool.id) is None:
            definition = tool.model_dump(mode="json")
            await ctx.records.add_agent_tool(tenant_id, tool.id, tool.kind, definition)
    for policy in document.policies:
        if await ctx.records.agent_policy(tenant_id, policy.id) is None:
            await ctx.records.add_agent_policy(tenant_id, policy.id, policy.model_dump())
    return await ctx.records.add_agent(tenant_id, document.name, version_of(spec), author(caller))

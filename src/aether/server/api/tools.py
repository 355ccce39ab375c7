"""Agent tools: the built-ins every tenant has and the tenant's own.

``GET /tools`` and ``GET /tools/{tool_id}`` (viewer), ``GET /tools/search?q=`` (ranked
by id and description), ``POST /tools`` and ``DELETE /tools/{tool_id}`` (admin; a
built-in is a 409), and ``POST /tools/sync`` (admin: upsert the tools of a YAML file;
only when the server's ``agent_tools_sync`` setting is on, else 404). Another
tenant's tool is a 404.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aether.agents.tools import BUILTIN_TOOLS, Tool, ToolOut, search_tools
from aether.errors import BadRequestError, ConflictError, NotFoundError
from aether.model.urls import HttpUrlText
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Admin, Caller
from aether.server.services.agent_policies import find_tool, list_tools
from aether.server.services.agent_tools import discover_mcp_tools

__all__ = ["router"]

router = APIRouter(tags=["tools"])
Ctx = Annotated[ServerContext, Depends(get_context)]
_MAX_SYNCED = 500


class McpDiscoverIn(BaseModel):
    """An MCP server to list the tools of: ``url`` (streamable HTTP) or ``command`` (a
    stdio server, run in a fresh sandbox on a node). ``register``: add the tools the
    tenant has no tool of that id of."""

    model_config = ConfigDict(extra="forbid", validate_by_alias=True, validate_by_name=True)

    url: HttpUrlText | None = None
    command: list[Annotated[str, Field(min_length=1, max_length=2048)]] | None = Field(
        default=None, min_length=1, max_length=64
    )
    add: bool = Field(default=False, alias="register")  # ("register" is BaseModel's)

    @model_validator(mode="after")
    def _one_server(self) -> McpDiscoverIn:
        if (self.url is None) == (self.command is None):
            raise ValueError("name the MCP server by exactly one of url or command")
        return self


class McpDiscoverOut(BaseModel):
    tools: list[ToolOut]
    registered: list[str]  # added to the tenant's tools now
    existing: list[str]  # ids the tenant has a tool of already: left as they are


class SyncOut(BaseModel):
    added: list[str]
    updated: list[str]


@router.get("/tools")
async def all_tools(caller: Caller, ctx: Ctx) -> list[ToolOut]:
    """The built-in tools, then the tenant's own."""
    return [ToolOut.of(t, builtin=b) for t, b in await list_tools(ctx, caller.tenant_id)]


@router.get("/tools/search")
async def search(
    caller: Caller, ctx: Ctx, q: Annotated[str | None, Query(min_length=1, max_length=256)] = None
) -> list[ToolOut] | ToolOut:
    """The tools whose id or description match ``q``, best first. Without ``q`` this
    path is the built-in tool ``search`` itself (``GET /tools/{tool_id}`` for it)."""
    if q is None:
        return ToolOut.of(BUILTIN_TOOLS["search"], builtin=True)
    tools = await list_tools(ctx, caller.tenant_id)
    found = search_tools([t for t, _ in tools], q)
    return [ToolOut.of(t, builtin=t.id in BUILTIN_TOOLS) for t in found]


@router.get("/tools/{tool_id}")
async def get_tool(tool_id: str, caller: Caller, ctx: Ctx) -> ToolOut:
    tool = await find_tool(ctx, caller.tenant_id, tool_id)
    if tool is None:
        raise NotFoundError(f"tool {tool_id!r} not found")
    return ToolOut.of(tool, builtin=tool_id in BUILTIN_TOOLS)


@router.post("/tools", status_code=201)
async def add_tool(body: Tool, caller: Admin, ctx: Ctx) -> ToolOut:
    if body.id in BUILTIN_TOOLS:
        raise ConflictError(f"tool {body.id!r} is built in: choose another id")
    definition = body.model_dump(mode="json")
    if not await ctx.records.add_agent_tool(caller.tenant_id, body.id, body.kind, definition):
        raise ConflictError(f"tool {body.id!r} already exists")
    return ToolOut.of(body, builtin=False)


@router.post("/tools/mcp/discover")
async def discover_mcp(body: McpDiscoverIn, caller: Admin, ctx: Ctx) -> McpDiscoverOut:
    """The tools an MCP server offers, as this tenant's ``mcp`` tools (added with
    ``register``). 403 ``egress_denied`` for a URL the cluster may not reach, 502
    ``mcp_failed`` when the server fails or does not speak MCP, 503 when no node ran a
    stdio server in time."""
    tools = await discover_mcp_tools(ctx, caller.tenant_id, url=body.url, command=body.command)
    registered: list[str] = []
    existing: list[str] = []
    for tool in tools:
        if not body.add:
            continue
        definition = tool.model_dump(mode="json")
        if tool.id in BUILTIN_TOOLS or not await ctx.records.add_agent_tool(
            caller.tenant_id, tool.id, tool.kind, definition
        ):
            existing.append(tool.id)
        else:
            registered.append(tool.id)
    return McpDiscoverOut(
        tools=[ToolOut.of(t, builtin=False) for t in tools],
        registered=registered,
        existing=existing,
    )


@router.delete("/tools/{tool_id}", status_code=204)
async def delete_tool(tool_id: str, caller: Admin, ctx: Ctx) -> Response:
    if tool_id in BUILTIN_TOOLS:
        raise ConflictError(f"tool {tool_id!r} is built in and cannot be deleted")
    if not await ctx.records.delete_agent_tool(caller.tenant_id, tool_id):
        raise NotFoundError(f"tool {tool_id!r} not found")
    return Response(status_code=204)


_SYNC_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"yaml": {"type": "string"}},
                    "required": ["yaml"],
                }
            },
        },
    }
}


async def _yaml_text(request: Request) -> str:
    """The YAML of the body: the body itself, or the ``yaml`` field of a JSON body."""
    raw = await request.body()
    if "json" not in request.headers.get("content-type", ""):
        return raw.decode("utf-8", errors="replace")
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequestError("invalid request: the body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("yaml"), str):
        raise BadRequestError('invalid request: a JSON body is {"yaml": "..."}')
    return str(body["yaml"])


def _parse_tools(text: str) -> list[Tool]:
    """The tools of a YAML document: a list of tools, or ``{tools: [...]}``."""
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text)):
            raise BadRequestError("the YAML uses an alias (*name): write each tool out")
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadRequestError(f"the YAML does not parse: {str(exc)[:300]}") from None
    if isinstance(document, dict) and "tools" in document:
        document = document["tools"]
    if not isinstance(document, list):
        raise BadRequestError("the YAML holds a list of tools (or tools: [...])")
    if len(document) > _MAX_SYNCED:
        raise BadRequestError(f"at most {_MAX_SYNCED} tools in one sync")
    tools: list[Tool] = []
    for n, item in enumerate(document):
        try:
            tool = Tool.model_validate(item)
        except ValidationError as exc:
            problem = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
            )
            raise BadRequestError(f"tool #{n + 1} is invalid: {problem}") from None
        if tool.id in BUILTIN_TOOLS:
            raise BadRequestError(f"tool #{n + 1}: {tool.id!r} is built in: choose another id")
        tools.append(tool)
    ids = [t.id for t in tools]
    if len(set(ids)) != len(ids):
        raise BadRequestError("the YAML defines a tool id twice")
    return tools


@router.post("/tools/sync", openapi_extra=_SYNC_BODY)
async def sync_tools(request: Request, caller: Admin, ctx: Ctx) -> SyncOut:
    """Add or replace the tools of a YAML file (``application/yaml``, or
    ``{"yaml": "..."}``); tools it does not name are left alone."""
    if not ctx.settings.agent_tools_sync:
        raise NotFoundError(
            "tool sync is off on this server (the server setting AETHER_AGENT_TOOLS_SYNC)"
        )
    tools = _parse_tools(await _yaml_text(request))
    added: list[str] = []
    updated: list[str] = []
    for tool in tools:
        definition = tool.model_dump(mode="json")
        fresh = await ctx.records.put_agent_tool(caller.tenant_id, tool.id, tool.kind, definition)
        (added if fresh else updated).append(tool.id)
    return SyncOut(added=added, updated=updated)

"""Tools an agent may call: their definitions, the built-ins every tenant has, and the
check of a call's arguments against the tool's JSON Schema.

A tool is a definition (no I/O here): an id unique in its tenant, a ``kind``, a
description, ``parameters`` (a JSON Schema of the arguments, an object) and the
configuration of its kind. Running a tool is the agent runtime's (a later step).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import jsonschema
from jsonschema.exceptions import best_match
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aether.errors import BadRequestError
from aether.model.urls import HttpUrlText

__all__ = [
    "BUILTIN_TOOLS",
    "ID_PATTERN",
    "KINDS",
    "AetherConfig",
    "AppConfig",
    "HttpConfig",
    "McpConfig",
    "MemoryConfig",
    "SandboxConfig",
    "Tool",
    "ToolOut",
    "builtin_tool",
    "hosts_of",
    "search_tools",
    "validate_arguments",
]

#: ids of tools and policies: lower case, digits, ``-`` and ``_``
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
KINDS = ("sandbox", "http", "app", "aether", "memory", "mcp")
ToolKind = Literal["sandbox", "http", "app", "aether", "memory", "mcp"]
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_Text = Annotated[str, Field(min_length=1, max_length=2048)]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SandboxConfig(_Config):
    """Runs a command (``command``: a template over the arguments, e.g. ``ls {path}``;
    none: the ``command`` argument) or a Python snippet (``mode: python``: the ``code``
    argument) in a fresh bwrap sandbox, or in the named one (``sandbox``)."""

    kind: Literal["sandbox"] = "sandbox"
    mode: Literal["command", "python"] = "command"
    command: _Text | None = None
    sandbox: Annotated[str, Field(pattern=ID_PATTERN)] | None = None


class HttpConfig(_Config):
    """A declared HTTP endpoint: ``url`` is a template over the arguments
    (``https://api.example.com/items/{id}``); ``headers`` maps a header name to the
    name of the secret whose value it carries."""

    kind: Literal["http"] = "http"
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: _Text
    headers: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9-]{1,64}$")], _Text] = {}

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("url must be an http:// or https:// URL (a template over arguments)")
        if any(c.isspace() or not c.isprintable() for c in url):
            raise ValueError("url must not contain spaces or control characters")
        return url


class AppConfig(_Config):
    """A route of an app deployed on Aether, called through the router."""

    kind: Literal["app"] = "app"
    app: Annotated[str, Field(min_length=1, max_length=128)]
    path: Annotated[str, Field(pattern=r"^/", max_length=2048)] = "/"
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"


#: what an ``aether`` tool does: read-only queries, then actions
AETHER_QUERIES = ("status", "apps", "nodes", "instances")
AETHER_ACTIONS = ("scale", "rollback", "drain")


class AetherConfig(_Config):
    """A query of the cluster (read-only) or an action through the Management API."""

    kind: Literal["aether"] = "aether"
    operation: Literal["status", "apps", "nodes", "instances", "scale", "rollback", "drain"]


class MemoryConfig(_Config):
    """Search or write the agent's memory."""

    kind: Literal["memory"] = "memory"
    operation: Literal["search", "write"]


class McpConfig(_Config):
    """Tools discovered from an MCP server: a command (stdio, in a sandbox) or a URL."""

    kind: Literal["mcp"] = "mcp"
    command: list[_Text] | None = Field(default=None, min_length=1, max_length=64)
    url: HttpUrlText | None = None
    tool: Annotated[str, Field(min_length=1, max_length=128)] | None = None

    @model_validator(mode="after")
    def _one_server(self) -> McpConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("an mcp tool names its server by exactly one of command or url")
        return self


ToolConfig = Annotated[
    SandboxConfig | HttpConfig | AppConfig | AetherConfig | MemoryConfig | McpConfig,
    Field(discriminator="kind"),
]


class Tool(BaseModel):
    """A tool definition (what ``POST /api/v1/tools`` takes)."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=ID_PATTERN)]
    kind: ToolKind
    description: Annotated[str, Field(min_length=1, max_length=1000)]
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="a JSON Schema (draft 2020-12) of the arguments: an object",
    )
    config: ToolConfig

    @model_validator(mode="before")
    @classmethod
    def _config_of_kind(cls, data: Any) -> Any:
        """``config`` takes its kind from the tool's (it need not repeat it)."""
        if isinstance(data, dict) and isinstance(data.get("config", {}), dict):
            config = {"kind": data.get("kind"), **data.get("config", {})}
            return {**data, "config": config}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Tool:
        if self.config.kind != self.kind:
            raise ValueError(f"config is of kind {self.config.kind}, the tool of {self.kind}")
        return self

    @field_validator("parameters")
    @classmethod
    def _a_schema(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(parameters)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"parameters is not a valid JSON Schema: {exc.message}") from None
        if parameters.get("type") != "object":
            raise ValueError('parameters must describe an object ("type": "object")')
        return parameters

    @property
    def read_only(self) -> bool:
        """Whether calling it changes nothing (memory search, cluster queries)."""
        if isinstance(self.config, MemoryConfig):
            return self.config.operation == "search"
        if isinstance(self.config, AetherConfig):
            return self.config.operation in AETHER_QUERIES
        return False


class ToolOut(BaseModel):
    """A tool as the API shows it: its definition, whether it is built in, whether
    calling it changes nothing."""

    id: str
    kind: ToolKind
    description: str
    parameters: dict[str, Any]
    config: dict[str, Any]
    builtin: bool
    read_only: bool

    @classmethod
    def of(cls, tool: Tool, *, builtin: bool) -> ToolOut:
        return cls(
            id=tool.id,
            kind=tool.kind,
            description=tool.description,
            parameters=tool.parameters,
            config=tool.config.model_dump(exclude={"kind"}),
            builtin=builtin,
            read_only=tool.read_only,
        )


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


_NAME = {"type": "string", "minLength": 1, "maxLength": 128}
BUILTIN_TOOLS: dict[str, Tool] = {
    tool.id: tool
    for tool in (
        Tool(
            id="search",
            kind="memory",
            description="Search the agent's memory",
            parameters=_object(
                {
                    "query": {"type": "string", "minLength": 1, "maxLength": 1000},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 50},
                },
                ["query"],
            ),
            config=MemoryConfig(operation="search"),
        ),
        Tool(
            id="memory-write",
            kind="memory",
            description="Write a note to the agent's memory",
            parameters=_object(
                {"text": {"type": "string", "minLength": 1, "maxLength": 20000}}, ["text"]
            ),
            config=MemoryConfig(operation="write"),
        ),
        Tool(
            id="run-code",
            kind="sandbox",
            description="Run a Python snippet in a fresh sandbox (no network unless allowed)",
            parameters=_object(
                {"code": {"type": "string", "minLength": 1, "maxLength": 100000}}, ["code"]
            ),
            config=SandboxConfig(mode="python"),
        ),
        Tool(
            id="run-command",
            kind="sandbox",
            description="Run a shell command in a fresh sandbox (no network unless allowed)",
            parameters=_object(
                {"command": {"type": "string", "minLength": 1, "maxLength": 4096}}, ["command"]
            ),
            config=SandboxConfig(mode="command"),
        ),
        Tool(
            id="cluster-status",
            kind="aether",
            description="Read the cluster's status: nodes, apps, instances (read-only)",
            parameters=_object({}, []),
            config=AetherConfig(operation="status"),
        ),
        Tool(
            id="apps-list",
            kind="aether",
            description="List the tenant's apps and their instances (read-only)",
            parameters=_object({}, []),
            config=AetherConfig(operation="apps"),
        ),
        Tool(
            id="scale",
            kind="aether",
            description="Scale an app to a number of instances (an action)",
            parameters=_object(
                {"app": _NAME, "instances": {"type": "integer", "minimum": 0, "maximum": 1000}},
                ["app", "instances"],
            ),
            config=AetherConfig(operation="scale"),
        ),
        Tool(
            id="rollback",
            kind="aether",
            description="Roll an app back to its previous (or a given) version (an action)",
            parameters=_object(
                {"app": _NAME, "version": {"type": "integer", "minimum": 1}}, ["app"]
            ),
            config=AetherConfig(operation="rollback"),
        ),
        Tool(
            id="drain",
            kind="aether",
            description="Drain a node: move its instances away (an action; cluster operators)",
            parameters=_object({"node": _NAME}, ["node"]),
            config=AetherConfig(operation="drain"),
        ),
    )
}


def builtin_tool(tool_id: str) -> Tool | None:
    return BUILTIN_TOOLS.get(tool_id)


def validate_arguments(tool: Tool, arguments: Mapping[str, Any]) -> None:
    """Raise ``BadRequestError`` (400) naming the first argument that breaks the schema."""
    validator = jsonschema.Draft202012Validator(tool.parameters)
    error = best_match(validator.iter_errors(dict(arguments)))
    if error is None:
        return
    where = "/".join(str(p) for p in error.absolute_path)
    at = f" at {where!r}" if where else ""
    raise BadRequestError(f"invalid arguments for tool {tool.id!r}{at}: {error.message[:300]}")


def hosts_of(tool: Tool, arguments: Mapping[str, Any]) -> list[str]:
    """The hosts a call reaches that the tool itself declares: an http tool's URL host
    (its template filled with the arguments). Sandboxes say theirs in the request."""
    if not isinstance(tool.config, HttpConfig):
        return []
    url = _PLACEHOLDER.sub(lambda m: str(arguments.get(m[1], m[0])), tool.config.url)
    try:
        host = urlsplit(url).hostname
    except ValueError:  # an argument made the URL unparsable: its template's host, then
        host = urlsplit(tool.config.url).hostname
    return [host] if host else []


_WORD = re.compile(r"[a-z0-9]+")


def _score(tool: Tool, words: list[str]) -> int:
    """How well ``words`` match the tool: its id counts more than its description."""
    name = tool.id.lower()
    described = set(_WORD.findall(tool.description.lower()))
    score = 0
    for word in words:
        if word == name:
            score += 8
        elif word in name:
            score += 4
        if word in described:
            score += 2
        elif any(d.startswith(word) for d in described):
            score += 1
    return score


def search_tools(tools: list[Tool], query: str) -> list[Tool]:
    """The tools matching ``query`` by id and description, best first (ties by id)."""
    words = _WORD.findall(query.lower())
    scored = [(s, t) for t in tools if (s := _score(t, words)) > 0]
    return [t for _, t in sorted(scored, key=lambda st: (-st[0], st[1].id))]

"""Running the tools that are outbound calls: ``http`` (a declared endpoint), ``app``
(a route of an app on Aether, through a router) and ``mcp`` (a tool of an MCP server
over streamable HTTP). The run loop calls these with a :class:`ToolCall` whose
arguments it has validated and whose secrets it has unsealed.

A tool's failure is a :class:`ToolResult` with ``ok=False``: a non-2xx answer (its
status and a short body), a transport error, a timeout, a missing secret. Only an egress
refusal raises (:class:`aether.errors.EgressDeniedError`), so the run loop records a
denied step: http and mcp calls go through :class:`aether.agents.egress.EgressTransport`
(the policy's ``egress_hosts``, the cluster's ``AETHER_EGRESS_ALLOW``), redirects too.

Every call carries the run's ``Idempotency-Key`` (``{run_id}:{call_id}``), so an
endpoint that honours it runs a call repeated after a node's failure once. Outputs are
bounded (:data:`OUTPUT_LIMIT`) and never show a secret's value.

MCP servers started by a command (stdio) are not run yet: such a tool answers
``ok=False`` saying so; give the server's URL instead.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from aether.agents.egress import EgressTransport
from aether.agents.mcp import (
    MCP_PROTOCOL_VERSION,
    McpError,
    as_tool,
    content_text,
    initialize_params,
)
from aether.agents.tools import AppConfig, HttpConfig, McpConfig, Tool
from aether.model.names import route_path

__all__ = [
    "MCP_PROTOCOL_VERSION",
    "OUTPUT_LIMIT",
    "McpError",
    "ToolCall",
    "ToolResult",
    "fill_url",
    "list_mcp_tools",
    "run_app",
    "run_http",
    "run_mcp",
]

OUTPUT_LIMIT = 16 * 1024  # bytes of an answer given back to the model
ERROR_BODY = 500  # characters of a failed answer's body quoted
MAX_REDIRECTS = 5
_BODY_METHODS = ("POST", "PUT", "PATCH")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_REDACTED = "[redacted]"


@dataclass(frozen=True)
class ToolCall:
    tool: Tool
    arguments: dict[str, Any]  # already validated against tool.parameters
    idempotency_key: str  # "{run_id}:{call_id}": sent as the Idempotency-Key header
    secrets: dict[str, str]  # secret name -> value, those the tool's headers name
    egress_hosts: list[str]  # the policy's egress_hosts
    allow_private: list[str]  # the cluster's AETHER_EGRESS_ALLOW CIDRs
    router_url: str | None = None  # for app tools: a router's base URL
    tenant: str = "default"  # for app tools: whose app
    timeout: float = 30.0


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    output: str  # the text given back to the model (bounded)
    status: int | None = None
    error: str | None = None


def fill_url(template: str, arguments: dict[str, Any]) -> tuple[str, set[str]]:
    """``template`` with each ``{name}`` replaced by the argument, percent-encoded (a
    ``/`` too), and the names used. A placeholder without an argument stays as is."""
    used: set[str] = set()

    def value(match: re.Match[str]) -> str:
        name = match[1]
        if name not in arguments:
            return match[0]
        used.add(name)
        raw = arguments[name]
        text = raw if isinstance(raw, str) else json.dumps(raw)
        return quote(text, safe="")

    return _PLACEHOLDER.sub(value, template), used


def _bounded(data: bytes, more: bool) -> str:
    text = data[:OUTPUT_LIMIT].decode(errors="replace")
    if more or len(data) > OUTPUT_LIMIT:
        return f"{text}\n[truncated: the first {OUTPUT_LIMIT} bytes of the answer]"
    return text


def _scrub(text: str, secrets: dict[str, str]) -> str:
    for value in secrets.values():
        if value:
            text = text.replace(value, _REDACTED)
    return text


def _failure(error: str, call: ToolCall, status: int | None = None, body: str = "") -> ToolResult:
    return ToolResult(
        ok=False,
        output=_scrub(body[:ERROR_BODY], call.secrets) or error,
        status=status,
        error=_scrub(error, call.secrets),
    )


def _query(arguments: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in arguments.items()}


def _client(call: ToolCall, *, guarded: bool) -> httpx.AsyncClient:
    transport = EgressTransport(call.egress_hosts, call.allow_private) if guarded else None
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(call.timeout),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        trust_env=False,  # a proxy would bypass the egress guard
    )


async def _read(response: httpx.Response) -> tuple[bytes, bool]:
    """At most OUTPUT_LIMIT + 1 bytes of the answer, and whether there was more."""
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > OUTPUT_LIMIT:
            return data, True
    return data, False


async def _send(
    call: ToolCall, method: str, url: str, *, guarded: bool, **options: Any
) -> ToolResult:
    """One request; its answer (bounded) as a result."""
    headers = {**options.pop("headers", {}), "Idempotency-Key": call.idempotency_key}
    try:
        async with (
            _client(call, guarded=guarded) as client,
            client.stream(method, url, headers=headers, **options) as response,
        ):
            data, more = await _read(response)
    except httpx.TimeoutException:
        return _failure(f"no answer from {_where(url)} within {call.timeout:g}s", call)
    except httpx.TooManyRedirects:
        return _failure(f"{_where(url)} redirected more than {MAX_REDIRECTS} times", call)
    except httpx.HTTPError as exc:
        return _failure(f"cannot reach {_where(url)}: {exc or type(exc).__name__}", call)
    text = _scrub(_bounded(data, more), call.secrets)
    if not 200 <= response.status_code < 300:
        return _failure(f"HTTP {response.status_code}", call, response.status_code, text)
    return ToolResult(ok=True, output=text, status=response.status_code)


def _where(url: str) -> str:
    """``url`` without its query (arguments may be long or private)."""
    return url.split("?", 1)[0][:200]


def _options(method: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The remaining arguments: a JSON body for POST/PUT/PATCH, else the query."""
    if method in _BODY_METHODS:
        return {"json": arguments}
    return {"params": _query(arguments)} if arguments else {}


async def run_http(call: ToolCall) -> ToolResult:
    """An http tool: its URL template filled from the arguments (percent-encoded), its
    headers from the secrets they name, the other arguments as the JSON body (POST, PUT,
    PATCH) or the query (GET, DELETE); egress-checked, redirects too."""
    config = call.tool.config
    if not isinstance(config, HttpConfig):
        raise TypeError(f"tool {call.tool.id!r} is not an http tool")
    missing = sorted(s for s in config.headers.values() if s not in call.secrets)
    if missing:
        return _failure(f"secret {missing[0]!r} is not set (aether secrets set)", call)
    headers = {header: call.secrets[secret] for header, secret in config.headers.items()}
    url, used = fill_url(config.url, call.arguments)
    rest = {k: v for k, v in call.arguments.items() if k not in used}
    return await _send(
        call, config.method, url, guarded=True, headers=headers, **_options(config.method, rest)
    )


async def run_app(call: ToolCall) -> ToolResult:
    """An app tool: ``route_path(app, tenant) + path`` on the router (the cluster's own,
    so not egress-checked), the arguments as the JSON body (POST, PUT, PATCH) or the
    query (GET, DELETE)."""
    config = call.tool.config
    if not isinstance(config, AppConfig):
        raise TypeError(f"tool {call.tool.id!r} is not an app tool")
    if not call.router_url:
        return _failure("no router to reach the app through", call)
    try:
        prefix = route_path(config.app, call.tenant)
    except ValueError as exc:
        return _failure(f"app {config.app!r}: {exc}", call)
    path, used = fill_url(config.path, call.arguments)
    url = call.router_url.rstrip("/") + prefix + path.lstrip("/")
    rest = {k: v for k, v in call.arguments.items() if k not in used}
    return await _send(call, config.method, url, guarded=False, **_options(config.method, rest))


# -- MCP over streamable HTTP (JSON-RPC 2.0) ------------------------------------------


class _McpSession:
    """One MCP session over streamable HTTP: initialize, then requests."""

    def __init__(self, http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
        self.http, self.url, self.headers = http, url, dict(headers)
        self._id = 0

    async def open(self) -> None:
        result = await self.request("initialize", initialize_params())
        self.headers["MCP-Protocol-Version"] = str(
            result.get("protocolVersion", MCP_PROTOCOL_VERSION)
        )
        await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def close(self) -> None:
        if "Mcp-Session-Id" in self.headers:
            with contextlib.suppress(httpx.HTTPError):  # idle sessions expire anyway
                await self.http.delete(self.url, headers=self.headers)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._id += 1
        message = {"jsonrpc": "2.0", "id": self._id, "method": method, "params": params}
        response = await self._post(message)
        session = response.headers.get("mcp-session-id")
        if session:
            self.headers["Mcp-Session-Id"] = session
        answer = _answer_of(response, self._id)
        if "error" in answer:
            error = answer["error"]
            detail = error.get("message") if isinstance(error, dict) else error
            raise McpError(f"{method}: {detail}")
        result = answer.get("result")
        if not isinstance(result, dict):
            raise McpError(f"{method}: the answer has no result object")
        return result

    async def _post(self, message: dict[str, Any]) -> httpx.Response:
        try:
            response = await self.http.post(
                self.url,
                json=message,
                headers={**self.headers, "Accept": "application/json, text/event-stream"},
            )
        except httpx.InvalidURL as exc:  # a URL stored before URLs were checked when given
            raise McpError(f"not a URL a request can be sent to: {exc}") from None
        if response.status_code >= 400:
            raise McpError(f"HTTP {response.status_code}: {response.text[:ERROR_BODY]}")
        return response


def _sse_messages(text: str) -> list[Any]:
    """The JSON data of each server-sent event in ``text``."""
    messages = []
    for event in re.split(r"\r?\n\r?\n", text):
        data = "\n".join(
            line[5:].lstrip(" ") for line in event.splitlines() if line.startswith("data:")
        )
        if data:
            try:
                messages.append(json.loads(data))
            except ValueError:
                continue
    return messages


def _answer_of(response: httpx.Response, request_id: int) -> dict[str, Any]:
    """The JSON-RPC answer to ``request_id`` (a JSON body, or one event of a stream)."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        messages = _sse_messages(response.text)
    else:
        try:
            loaded = response.json()
        except ValueError:
            raise McpError(f"the answer is not JSON: {response.text[:ERROR_BODY]!r}") from None
        messages = loaded if isinstance(loaded, list) else [loaded]
    for message in messages:
        if isinstance(message, dict) and message.get("id") == request_id:
            return message
    raise McpError(f"no answer to request {request_id}")


def _mcp_client(
    egress_hosts: list[str], allow_private: list[str], timeout: float
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=EgressTransport(egress_hosts, allow_private),
        timeout=httpx.Timeout(timeout),
        trust_env=False,
    )


async def list_mcp_tools(
    url: str,
    *,
    egress_hosts: list[str],
    allow_private: list[str],
    timeout: float = 30.0,
) -> list[Tool]:
    """The tools an MCP server at ``url`` (streamable HTTP) offers, as Aether ``mcp``
    tools naming it (``config.tool`` is the server's name for each). Raises
    ``EgressDeniedError`` for a refused URL and ``McpError`` (or ``httpx.HTTPError``)
    when the server fails or answers something else than MCP."""
    tools: list[Tool] = []
    async with _mcp_client(egress_hosts, allow_private, timeout) as http:
        session = _McpSession(http, url, {})
        await session.open()
        try:
            cursor: str | None = None
            while True:
                result = await session.request("tools/list", {"cursor": cursor} if cursor else {})
                raw_tools = result.get("tools")
                for raw in raw_tools if isinstance(raw_tools, list) else []:
                    tool = as_tool(raw, url=url)
                    if tool is not None and all(t.id != tool.id for t in tools):
                        tools.append(tool)
                cursor = result.get("nextCursor")
                if not cursor:
                    return tools
        finally:
            await session.close()


async def run_mcp(call: ToolCall) -> ToolResult:
    """An mcp tool: ``tools/call`` of the server's tool (``config.tool``, else the tool's
    id) over streamable HTTP, egress-checked. A server started by a command (stdio) runs
    in a sandbox task instead (``services/runs``): here it is ``ok=False`` saying so."""
    config = call.tool.config
    if not isinstance(config, McpConfig):
        raise TypeError(f"tool {call.tool.id!r} is not an mcp tool")
    if config.url is None:
        return _failure(
            "an MCP server started by a command (stdio) runs in a sandbox task, not here",
            call,
        )
    name = config.tool or call.tool.id
    try:
        async with _mcp_client(call.egress_hosts, call.allow_private, call.timeout) as http:
            session = _McpSession(http, config.url, {"Idempotency-Key": call.idempotency_key})
            await session.open()
            try:
                result = await session.request(
                    "tools/call", {"name": name, "arguments": call.arguments}
                )
            finally:
                await session.close()
    except httpx.TimeoutException:
        return _failure(f"no answer from {_where(config.url)} within {call.timeout:g}s", call)
    except httpx.HTTPError as exc:
        return _failure(f"cannot reach {_where(config.url)}: {exc or type(exc).__name__}", call)
    except McpError as exc:
        return _failure(f"MCP server {_where(config.url)}: {exc}", call)
    text = _scrub(_bounded(content_text(result).encode(), False), call.secrets)
    if result.get("isError"):
        return ToolResult(ok=False, output=text, error=f"MCP tool {name!r} failed")
    return ToolResult(ok=True, output=text)

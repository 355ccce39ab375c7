"""Running http, app and mcp tools against real servers on loopback: the request each
sends (URL-encoding, secret headers, the idempotency key, the body), failures as
results, egress refusals raised, and a real MCP server (the mcp package's MCPServer over
streamable HTTP)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from mcp.server.mcpserver import MCPServer

from aether.agents.executors import (
    OUTPUT_LIMIT,
    ToolCall,
    fill_url,
    list_mcp_tools,
    run_app,
    run_http,
    run_mcp,
)
from aether.agents.tools import AppConfig, HttpConfig, McpConfig, Tool
from aether.errors import EgressDeniedError
from aether.ports import free_port
from tests.support.tool_server import ToolServer, serving, tool_server

LOOPBACK = ["127.0.0.0/8"]
TOKEN = "tok-0123456789-SECRET"
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


@pytest.fixture
def web() -> Iterator[ToolServer]:
    with tool_server() as server:
        yield server


def _http_tool(url: str, method: Method = "GET", headers: dict[str, str] | None = None) -> Tool:
    return Tool(
        id="api",
        kind="http",
        description="an endpoint",
        config=HttpConfig(method=method, url=url, headers=headers or {}),
    )


def _call(tool: Tool, arguments: dict[str, Any], **more: Any) -> ToolCall:
    options: dict[str, Any] = {
        "idempotency_key": "run_1:call_1",
        "secrets": {"api-token": TOKEN},
        "egress_hosts": ["127.0.0.1"],
        "allow_private": LOOPBACK,
        "timeout": 5.0,
        **more,
    }
    return ToolCall(tool=tool, arguments=arguments, **options)


def test_fill_url_percent_encodes_every_argument() -> None:
    url, used = fill_url("https://h/items/{id}/{n}?x={missing}", {"id": "a b/c?d&e", "n": 3})
    assert url == "https://h/items/a%20b%2Fc%3Fd%26e/3?x={missing}"
    assert used == {"id", "n"}


async def test_a_get_fills_the_url_sends_the_secret_and_the_idempotency_key(
    web: ToolServer,
) -> None:
    tool = _http_tool(web.url + "/items/{id}", headers={"Authorization": "api-token"})
    result = await run_http(_call(tool, {"id": "a b/../c", "q": "x&y"}))
    assert result.ok and result.status == 200, result
    [seen] = web.requests
    assert seen.method == "GET" and seen.path == "/items/a%20b%2F..%2Fc"
    assert seen.query == "q=x%26y"
    assert seen.headers["authorization"] == TOKEN
    assert seen.headers["idempotency-key"] == "run_1:call_1"
    assert TOKEN not in result.output and "[redacted]" in result.output  # echoed back


async def test_a_post_sends_the_remaining_arguments_as_json(web: ToolServer) -> None:
    tool = _http_tool(web.url + "/orders/{order}", "POST")
    result = await run_http(_call(tool, {"order": 7, "qty": 2, "tags": ["a"]}))
    assert result.ok, result
    [seen] = web.requests
    assert seen.path == "/orders/7" and seen.body == {"qty": 2, "tags": ["a"]}
    assert json.loads(result.output)["body"] == {"qty": 2, "tags": ["a"]}


async def test_failures_are_results_with_a_short_body(web: ToolServer) -> None:
    failed = await run_http(_call(_http_tool(web.url + "/status/503"), {}))
    assert not failed.ok and failed.status == 503 and failed.error == "HTTP 503"
    assert failed.output.startswith("scripted failure") and len(failed.output) <= 500
    slow = await run_http(_call(_http_tool(web.url + "/slow"), {}, timeout=0.5))
    assert not slow.ok and slow.status is None and "within 0.5s" in (slow.error or "")
    closed = await run_http(_call(_http_tool(f"http://127.0.0.1:{free_port()}/x"), {}))
    assert not closed.ok and "cannot reach" in (closed.error or "")


async def test_a_big_answer_is_bounded_and_says_so(web: ToolServer) -> None:
    result = await run_http(_call(_http_tool(web.url + "/big"), {}))
    assert result.ok
    assert result.output.startswith("y" * OUTPUT_LIMIT) and "truncated" in result.output
    assert len(result.output) < OUTPUT_LIMIT + 100


async def test_a_missing_secret_fails_without_a_request(web: ToolServer) -> None:
    tool = _http_tool(web.url + "/x", headers={"X-Key": "other-secret"})
    result = await run_http(_call(tool, {}))
    assert not result.ok and "'other-secret' is not set" in (result.error or "")
    assert web.requests == []


async def test_egress_refusals_raise_and_send_nothing(web: ToolServer) -> None:
    tool = _http_tool(web.url + "/x")
    with pytest.raises(EgressDeniedError, match="egress hosts"):
        await run_http(_call(tool, {}, egress_hosts=["api.example.com"]))
    with pytest.raises(EgressDeniedError, match="loopback"):
        await run_http(_call(tool, {}, allow_private=[]))
    redirect = _http_tool(web.url + "/redirect?to=http%3A%2F%2F169.254.169.254%2F")
    with pytest.raises(EgressDeniedError, match="link-local"):
        await run_http(_call(redirect, {}, egress_hosts=["*"]))
    assert [r.path for r in web.requests] == ["/redirect"]  # only the allowed first hop
    url_argument = _http_tool("http://{host}/x")
    with pytest.raises(EgressDeniedError, match="egress hosts"):
        await run_http(_call(url_argument, {"host": "evil.example.net"}))


def _app_tool(method: Method = "POST", path: str = "/items/{sku}") -> Tool:
    return Tool(
        id="shop",
        kind="app",
        description="the shop",
        config=AppConfig(app="shop", path=path, method=method),
    )


async def test_an_app_tool_goes_through_the_router_to_the_tenant_s_app(web: ToolServer) -> None:
    result = await run_app(_call(_app_tool(), {"sku": "a/b", "n": 1}, router_url=web.url))
    assert result.ok, result
    other = await run_app(
        _call(_app_tool("GET", "/"), {"q": "z"}, router_url=web.url + "/", tenant="acme")
    )
    assert other.ok, other
    first, second = web.requests
    assert first.method == "POST" and first.path == "/apps/shop/items/a%2Fb"
    assert first.body == {"n": 1} and first.headers["idempotency-key"] == "run_1:call_1"
    assert second.method == "GET" and second.path == "/t/acme/apps/shop/" and second.query == "q=z"
    nowhere = await run_app(_call(_app_tool(), {"sku": "x"}))
    assert not nowhere.ok and "no router" in (nowhere.error or "")


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    server = MCPServer("test-tools")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers"""
        return a + b

    @server.tool(name="Shout.Loud")
    def shout(text: str) -> str:
        """Upper-case a text"""
        return text.upper()

    @server.tool()
    def boom(reason: str) -> str:
        """Always fails"""
        raise ValueError(reason)

    with serving(server.streamable_http_app(), lifespan="on") as url:
        yield url + "/mcp"


async def test_mcp_tools_are_listed_as_aether_tools(mcp_url: str) -> None:
    tools = await list_mcp_tools(mcp_url, egress_hosts=["127.0.0.1"], allow_private=LOOPBACK)
    by_id = {tool.id: tool for tool in tools}
    assert set(by_id) == {"add", "shout-loud", "boom"}
    add = by_id["add"]
    assert add.kind == "mcp" and add.description == "Add two numbers"
    assert add.parameters["required"] == ["a", "b"]
    assert add.config.model_dump() == {
        "kind": "mcp",
        "command": None,
        "url": mcp_url,
        "tool": "add",
    }
    assert by_id["shout-loud"].config.model_dump()["tool"] == "Shout.Loud"


async def test_an_mcp_call_answers_the_tool_s_result_or_its_failure(mcp_url: str) -> None:
    tools = {
        t.id: t for t in await list_mcp_tools(mcp_url, egress_hosts=["*"], allow_private=LOOPBACK)
    }
    added = await run_mcp(_call(tools["add"], {"a": 2, "b": 40}, egress_hosts=["*"]))
    assert added == added.__class__(ok=True, output="42")
    shouted = await run_mcp(_call(tools["shout-loud"], {"text": "hi"}, egress_hosts=["*"]))
    assert shouted.ok and shouted.output == "HI"
    failed = await run_mcp(_call(tools["boom"], {"reason": "no"}, egress_hosts=["*"]))
    assert not failed.ok and failed.error == "MCP tool 'boom' failed"
    unknown = Tool(id="nope", kind="mcp", description="x", config=McpConfig(url=mcp_url))
    missing = await run_mcp(_call(unknown, {}, egress_hosts=["*"]))
    assert not missing.ok


async def test_mcp_egress_refusals_raise(mcp_url: str) -> None:
    with pytest.raises(EgressDeniedError, match="egress hosts"):
        await list_mcp_tools(mcp_url, egress_hosts=["mcp.example.com"], allow_private=LOOPBACK)
    tool = Tool(id="add", kind="mcp", description="x", config=McpConfig(url=mcp_url, tool="add"))
    with pytest.raises(EgressDeniedError, match="loopback"):
        await run_mcp(_call(tool, {"a": 1, "b": 1}, allow_private=[]))


async def test_mcp_failures_and_stdio_servers_are_results() -> None:
    stdio = Tool(id="fs", kind="mcp", description="x", config=McpConfig(command=["mcp-fs"]))
    result = await run_mcp(_call(stdio, {}))
    assert not result.ok and "stdio" in (result.error or "") and "sandbox task" in result.output
    down = Tool(
        id="add",
        kind="mcp",
        description="x",
        config=McpConfig(url=f"http://127.0.0.1:{free_port()}/"),
    )
    unreachable = await run_mcp(_call(down, {}))
    assert not unreachable.ok and "cannot reach" in (unreachable.error or "")

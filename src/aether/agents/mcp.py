"""The Model Context Protocol's pure parts (JSON-RPC 2.0): the messages Aether sends, what
it reads from the answers, and MCP tools as Aether tools. No I/O: the HTTP transport is
``executors.py``'s; a stdio server runs as a sandbox task (``stdio_requests`` on its
stdin, ``stdio_result`` from its stdout).
"""

from __future__ import annotations

import json
import re
from typing import Any

from aether.agents.tools import ID_PATTERN, McpConfig, Tool

__all__ = [
    "MCP_PROTOCOL_VERSION",
    "McpError",
    "as_tool",
    "content_text",
    "initialize_params",
    "stdio_requests",
    "stdio_result",
    "tool_id",
]

MCP_PROTOCOL_VERSION = "2025-06-18"
_REQUEST_ID = 2  # the id of the one request after ``initialize`` (1) on stdio


class McpError(Exception):
    """An MCP server's error or an answer that is not MCP."""


def initialize_params() -> dict[str, Any]:
    return {
        "protocolVersion": MCP_PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "aether", "version": "1"},
    }


def tool_id(name: str) -> str | None:
    """An Aether tool id for the MCP tool ``name`` (None when none fits)."""
    candidate = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")[:64]
    return candidate if re.match(ID_PATTERN, candidate) else None


def as_tool(raw: Any, *, url: str | None = None, command: list[str] | None = None) -> Tool | None:
    """An MCP tool definition (of ``tools/list``) as an Aether ``mcp`` tool naming its
    server (None when it is not a usable one)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        return None
    found = tool_id(raw["name"])
    if found is None:
        return None
    schema = raw.get("inputSchema")
    try:
        return Tool(
            id=found,
            kind="mcp",
            description=(str(raw.get("description") or raw["name"]))[:1000],
            parameters=schema if isinstance(schema, dict) else {"type": "object"},
            config=McpConfig(url=url, command=command, tool=raw["name"]),
        )
    except ValueError:
        return None


def content_text(result: dict[str, Any]) -> str:
    """What a tools/call result says, as text: its text parts, other parts named."""
    parts: list[str] = []
    content = result.get("content")
    for item in content if isinstance(content, list) else []:
        if isinstance(item, dict) and item.get("type") == "text":
            parts.append(str(item.get("text", "")))
        elif isinstance(item, dict):
            parts.append(f"[{item.get('type', 'content')}]")
    if not parts and "structuredContent" in result:
        parts.append(json.dumps(result["structuredContent"]))
    return "\n".join(parts)


def stdio_requests(method: str, params: dict[str, Any]) -> str:
    """What a stdio server is sent on its stdin, one JSON-RPC message a line: initialize,
    the initialized notification, then ``method`` (``tools/list``, ``tools/call``). The
    stdin then closes, and a stdio server exits at its end."""
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": initialize_params()},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": _REQUEST_ID, "method": method, "params": params},
    ]
    return "".join(json.dumps(m) + "\n" for m in messages)


def stdio_result(stdout: str, method: str) -> dict[str, Any]:
    """The result of the request ``stdio_requests`` sent, from the server's stdout (one
    message a line; other lines, e.g. logs, skipped). McpError for its error, or none."""
    for line in stdout.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict) or message.get("id") != _REQUEST_ID:
            continue
        if "error" in message:
            error = message["error"]
            detail = error.get("message") if isinstance(error, dict) else error
            raise McpError(f"{method}: {detail}")
        result = message.get("result")
        if not isinstance(result, dict):
            raise McpError(f"{method}: the answer has no result object")
        return result
    raise McpError(f"{method}: the server wrote no answer to it")

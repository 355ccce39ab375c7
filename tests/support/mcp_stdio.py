"""A real MCP server over stdio, small enough to pass as ``python3 -c CODE``: it reads
JSON-RPC messages a line at a time on stdin and answers ``initialize``, ``tools/list``
and ``tools/call`` on stdout, exiting at the end of its input, as stdio MCP servers do.
It offers ``add`` (two numbers) and ``fail`` (a tool error). Standard library only, so
it runs in a sandbox that sees nothing but the host's read-only system."""

from __future__ import annotations

__all__ = ["STDIO_SERVER", "command"]

STDIO_SERVER = r"""
import json, sys
TOOLS = [
    {"name": "add", "description": "Add two numbers",
     "inputSchema": {"type": "object", "properties": {"a": {"type": "number"},
                     "b": {"type": "number"}}, "required": ["a", "b"]}},
    {"name": "fail", "description": "Always fails", "inputSchema": {"type": "object"}},
]
for line in sys.stdin:
    message = json.loads(line)
    if "id" not in message:
        continue
    method, params = message["method"], message.get("params", {})
    if method == "initialize":
        result = {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}},
                  "serverInfo": {"name": "adder", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call" and params["name"] == "add":
        a, b = params["arguments"]["a"], params["arguments"]["b"]
        result = {"content": [{"type": "text", "text": str(a + b)}]}
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": "it failed"}], "isError": True}
    else:
        print(json.dumps({"jsonrpc": "2.0", "id": message["id"],
                          "error": {"code": -32601, "message": "no such method"}}), flush=True)
        continue
    print("a log line the client must skip", file=sys.stdout, flush=True)
    print(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}), flush=True)
"""


def command() -> list[str]:
    """The server as an mcp tool's ``command``."""
    return ["python3", "-c", STDIO_SERVER]

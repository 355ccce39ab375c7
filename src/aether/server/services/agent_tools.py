"""The agent tools the server runs itself: ``memory`` (search and write the agent's
memory, as the run's steps) and ``aether`` (the cluster as the run's tenant sees it:
read-only queries, and the ``scale`` action when a policy allows the tool).

Each answers ``(ok, output)``: the output is the text the model gets, JSON for data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from aether.agents.executors import list_mcp_tools
from aether.agents.mcp import McpError, as_tool, stdio_requests, stdio_result
from aether.agents.tools import AETHER_ACTIONS, Tool
from aether.errors import AetherError, BadGatewayError, ServiceUnavailableError
from aether.model.names import shown_name
from aether.model.tasks import TaskState
from aether.server.context import ServerContext
from aether.server.services.cluster import read_snapshot
from aether.server.services.memory import embedder, store
from aether.server.services.revocations import forget_tokens
from aether.store.records.base import now
from aether.store.records.schema import AgentRunRow
from aether.tasks.queue.base import NewTask

__all__ = ["discover_mcp_tools", "run_server_tool"]


async def run_server_tool(
    ctx: ServerContext, run: AgentRunRow, tool: Tool, arguments: dict[str, Any]
) -> tuple[bool, str]:
    operation = str(getattr(tool.config, "operation", ""))
    if tool.kind == "memory":
        return await _memory(ctx, run, operation, arguments)
    if tool.kind == "aether":
        return await _aether(ctx, run, operation, arguments)
    return False, f"the server does not run {tool.kind} tools"


async def _memory(
    ctx: ServerContext, run: AgentRunRow, operation: str, arguments: dict[str, Any]
) -> tuple[bool, str]:
    memories = store(ctx)
    async with embedder(ctx, run.tenant_id, None) as embed:
        if operation == "write":
            item = await memories.write(
                run.tenant_id,
                run.agent_id,
                None,  # shared by the agent's threads
                str(arguments["text"]),
                {"run_id": run.id, "thread_id": run.thread_id},
                embedder=embed,
            )
            return True, json.dumps({"written": item.id})
        hits = await memories.search(
            run.tenant_id,
            run.agent_id,
            str(arguments["query"]),
            run.thread_id,
            limit=int(arguments.get("limit", 5)),
            mode="hybrid" if embed is not None else "text",
            embedder=embed,
        )
    found = [{"id": h.item.id, "text": h.item.text, "score": round(h.score, 4)} for h in hits]
    return True, json.dumps({"results": found})


async def _aether(
    ctx: ServerContext, run: AgentRunRow, operation: str, arguments: dict[str, Any]
) -> tuple[bool, str]:
    tenant = await ctx.records.tenant_name(run.tenant_id)
    if operation in AETHER_ACTIONS:
        method, path, body = _action(operation, arguments)
        return await _through_api(ctx, run, method, path, body)
    snapshot = await read_snapshot(ctx.store)
    apps = {
        shown_name(name, tenant): {"version": bp.version, "instances": bp.instances}
        for name, (bp, _) in snapshot.blueprints.items()
        if bp.tenant == run.tenant_id
    }
    instances = [
        {
            "app": shown_name(inst.app, tenant),
            "version": inst.version,
            "n": inst.n,
            "node": inst.node,
            "state": str(inst.state) if inst.state else None,
        }
        for inst, _ in snapshot.instances.values()
        if inst.tenant == run.tenant_id
    ]
    nodes = [{"id": node.id, "draining": node.draining} for node, _ in snapshot.nodes.values()]
    answers: dict[str, dict[str, Any]] = {
        "status": {"nodes": nodes, "apps": apps, "instances": len(instances)},
        "apps": {"apps": apps},
        "nodes": {"nodes": nodes},
        "instances": {"instances": instances},
    }
    answer = answers[operation]
    return True, json.dumps(answer)


def _action(operation: str, arguments: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """The Management API call an action is: (method, path, body)."""
    if operation == "scale":
        app = quote(str(arguments["app"]), safe="")
        return "POST", f"/api/v1/apps/{app}/scale", {"instances": int(arguments["instances"])}
    if operation == "rollback":
        app = quote(str(arguments["app"]), safe="")
        version = arguments.get("version")
        return "POST", f"/api/v1/apps/{app}/rollback", {"version": version} if version else {}
    node = quote(str(arguments["node"]), safe="")
    return "POST", f"/api/v1/nodes/{node}/drain", {}


async def _through_api(
    ctx: ServerContext, run: AgentRunRow, method: str, path: str, body: dict[str, Any]
) -> tuple[bool, str]:
    """An action through the Management API, as an operator of the run's tenant: with a
    token made for this call alone (named after the run, expiring in minutes, revoked
    after), so the API's own checks apply (roles, quotas: draining a node is for the
    cluster's operators only) and its audit event names the run."""
    expires = now() + timedelta(minutes=5)
    name = f"agent run {run.id}"
    token_id, token = await ctx.records.issue_token(
        run.tenant_id, "operator", name, expires_at=expires
    )
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=ctx.settings.api_url(), timeout=60) as http:
            answer = await http.request(method, path, json=body, headers=headers)
    finally:
        await ctx.records.revoke_token(token_id)
        await forget_tokens(ctx, [token_id])
    text = answer.text[:4000]
    if answer.status_code >= 400:
        return False, f"{method} {path} answered {answer.status_code}: {text}"
    return True, text


# -- discovering an MCP server's tools ------------------------------------------------

DISCOVER_WAIT = 60.0  # seconds a stdio server's listing may take, a node included


async def discover_mcp_tools(
    ctx: ServerContext, tenant_id: str, *, url: str | None, command: list[str] | None
) -> list[Tool]:
    """The tools an MCP server offers, as the tenant's ``mcp`` tools naming it: over
    streamable HTTP at ``url`` (egress-checked: public addresses, or the cluster's
    ``AETHER_EGRESS_ALLOW``), or a stdio server started by ``command`` in a fresh
    sandbox on a node (a task of the tenant's; no network)."""
    try:
        if url is not None:
            host = urlsplit(url).hostname or ""
            return await list_mcp_tools(
                url, egress_hosts=[host], allow_private=list(ctx.settings.egress_allow)
            )
        assert command is not None
        return await _stdio_tools(ctx, tenant_id, command)
    except (McpError, httpx.HTTPError) as exc:
        raise BadGatewayError(f"the MCP server failed: {exc}", code="mcp_failed") from None


async def _stdio_tools(ctx: ServerContext, tenant_id: str, command: list[str]) -> list[Tool]:
    task = await ctx.queue.submit(
        tenant_id,
        NewTask(
            type="agent:sandbox",
            payload={
                "command": command,
                "stdin": stdio_requests("tools/list", {}),
                "sandbox_id": "mcp-" + secrets.token_hex(6),
            },
            max_retry=0,
            timeout=DISCOVER_WAIT,
        ),
    )
    ctx.task_submitted.set()
    deadline = time.monotonic() + DISCOVER_WAIT + 5
    while True:
        found = await ctx.queue.get(task.id)
        if found.state is TaskState.SUCCEEDED:
            stdout = str((found.result or {}).get("stdout", ""))
            listed = stdio_result(stdout, "tools/list").get("tools")
            raws = listed if isinstance(listed, list) else []
            tools = [as_tool(raw, command=command) for raw in raws]
            return [t for t in tools if t is not None]
        if found.state.final:
            raise McpError(f"its sandbox task {task.id} ended {found.state}: {found.error}")
        if time.monotonic() > deadline:
            with contextlib.suppress(AetherError):
                await ctx.queue.cancel(task.id, tenant_id)
            raise ServiceUnavailableError(
                f"no node ran the MCP server within {DISCOVER_WAIT:g} s (task {task.id}): "
                "are nodes with a sandbox driver up?"
            )
        await asyncio.sleep(0.1)

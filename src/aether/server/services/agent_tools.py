"""The agent tools the server runs itself: ``memory`` (search and write the agent's
memory, as the run's steps) and ``aether`` (the cluster as the run's tenant sees it:
read-only queries, and the ``scale`` action when a policy allows the tool).

Each answers ``(ok, output)``: the output is the text the model gets, JSON for data.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx

from aether.agents.tools import AETHER_ACTIONS, Tool
from aether.model.names import shown_name
from aether.server.context import ServerContext
from aether.server.services.cluster import read_snapshot
from aether.server.services.memory import embedder, store
from aether.server.services.revocations import forget_tokens
from aether.store.records.base import now
from aether.store.records.schema import AgentRunRow

__all__ = ["run_server_tool"]


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

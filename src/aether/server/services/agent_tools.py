"""The agent tools the server runs itself: ``memory`` (search and write the agent's
memory, as the run's steps) and ``aether`` (the cluster as the run's tenant sees it:
read-only queries, and the ``scale`` action when a policy allows the tool).

Each answers ``(ok, output)``: the output is the text the model gets, JSON for data.
"""

from __future__ import annotations

import json
from typing import Any

from aether.agents.tools import Tool
from aether.model.names import cluster_name, shown_name
from aether.server.context import ServerContext
from aether.server.services.cluster import read_snapshot, update_blueprint
from aether.server.services.memory import embedder, store
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
    if operation == "scale":
        app, count = str(arguments["app"]), int(arguments["instances"])
        _, after = await update_blueprint(
            ctx.store,
            cluster_name(app, tenant),
            lambda bp: bp.model_copy(update={"instances": count}),
            tenant=run.tenant_id,
        )
        return True, json.dumps({"app": app, "instances": after.instances})
    if operation not in ("status", "apps", "nodes", "instances"):
        return False, f"the aether operation {operation!r} is not available to agents yet"
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

"""The node's side of an agent's run: ask the server what is next, execute the tools that
are outbound calls (``http``, ``app``, ``mcp``), report their results, until the run ends
or waits for a person. The server keeps every step, so this loop holds no state: a node
that takes over a run after another died simply starts asking.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aether import tracing
from aether.agents.tools import Tool
from aether.errors import AetherError, ConflictError, ForbiddenError, NotFoundError

__all__ = ["drive_run", "execute_tool"]

log = logging.getLogger("aether.agents.runner")


async def drive_run(client: Any, run_id: str, *, node: str, task_id: str) -> dict[str, Any]:
    """Drive the run; the task's result says where it stopped."""
    while True:
        try:
            nxt = await client.run_next(run_id, node=node, task_id=task_id)
        except (ConflictError, NotFoundError) as exc:  # another task drives it, or it is gone
            return {"run_id": run_id, "stopped": exc.message}
        action = nxt["action"]
        if action == "done":
            return {"run_id": run_id, "status": nxt["status"]}
        if action == "wait":
            continue
        with tracing.span(
            f"agent step: {nxt.get('tool', {}).get('id', 'tool')}",
            attributes={"aether.run": run_id, "aether.step": nxt.get("step")},
        ):
            ok, output, error = await execute_tool(nxt)
        for attempt in range(10):  # the server may be restarting: keep the result
            try:
                await client.run_tool_result(
                    run_id, nxt["step"], node=node, ok=ok, output=output, error=error
                )
                break
            except (ConflictError, NotFoundError, ForbiddenError):
                return {"run_id": run_id, "stopped": "the run went on without this node"}
            except AetherError as exc:
                log.debug("reporting step %s of %s failed (%s)", nxt["step"], run_id, exc)
                await asyncio.sleep(min(0.2 * 2**attempt, 5))


async def execute_tool(nxt: dict[str, Any]) -> tuple[bool, str, str | None]:
    """Run the tool the server handed over: (ok, output, error)."""
    from aether.agents.executors import ToolCall, run_app, run_http, run_mcp

    tool = Tool.model_validate(nxt["tool"])
    call = ToolCall(
        tool=tool,
        arguments=dict(nxt.get("arguments") or {}),
        idempotency_key=str(nxt["idempotency_key"]),
        secrets=dict(nxt.get("secrets") or {}),
        egress_hosts=list(nxt.get("egress_hosts") or []),
        allow_private=list(nxt.get("allow_private") or []),
        router_url=nxt.get("router_url"),
        tenant=str(nxt.get("tenant") or "default"),
    )
    run = {"http": run_http, "app": run_app, "mcp": run_mcp}
    runner = run.get(tool.kind)
    if runner is None:
        return False, "", f"a node does not run {tool.kind} tools"
    try:
        result = await runner(call)
    except AetherError as exc:  # an egress denial
        return False, "", exc.message
    return result.ok, result.output, result.error

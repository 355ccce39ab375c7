"""The overview page (``/ui/``): leader, nodes, apps, tasks and recent decisions, live.

An empty cluster (no node, no app) shows the first-run guide above the tables.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from aether.server.console.view import Page

__all__ = ["router", "task_summary"]

router = APIRouter()
CHART_NODES = 8  # CPU charts on the overview; the Nodes page has every node


def task_summary(counts: dict[str, int]) -> dict[str, int]:
    """The overview's four task figures from the per-state counts."""
    return {
        "queued": sum(counts.get(s, 0) for s in ("pending", "scheduled", "retry")),
        "running": counts.get("active", 0),
        "failed": counts.get("failed", 0) + counts.get("dead", 0),
        "succeeded": counts.get("succeeded", 0),
    }


@router.get("")
async def root() -> Response:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/")
async def overview(view: Page) -> Response:
    status, risk, decisions, tasks = await asyncio.gather(
        view.api.get("/api/v1/status"),
        view.api.get("/api/v1/risk"),
        view.api.get("/api/v1/decisions", limit=8),
        view.api.get("/api/v1/tasks/stats", since=time.time() - 3600),
    )
    by_node: dict[str, Any] = {a["node"]: a for a in risk}
    return view.render(
        "overview.html",
        page="overview",
        status=status,
        risk=by_node,
        decisions=decisions,
        tasks=task_summary(tasks),
        first_run=not status["nodes"] and not status["apps"],
        chart_nodes=CHART_NODES,
    )

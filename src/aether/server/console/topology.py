"""The topology page (``/ui/topology``): every node as a box with its instances inside.

Boxes are coloured by the node's state and risk, instances by their lifecycle
state; each links to its node's or app's page. A CSS grid, no canvas.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from aether.server.console.view import Page

__all__ = ["by_node", "router"]

router = APIRouter()


def by_node(instances: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The instances grouped by the node they are placed on, each group by app and number."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for inst in sorted(instances, key=lambda i: (i["app"], i["n"])):
        grouped.setdefault(inst["node"], []).append(inst)
    return grouped


@router.get("/topology")
async def topology(view: Page) -> Response:
    nodes, instances, risk = await asyncio.gather(
        view.api.get("/api/v1/nodes"),
        view.api.get("/api/v1/instances"),
        view.api.get("/api/v1/risk"),
    )
    return view.render(
        "topology.html",
        page="topology",
        nodes=nodes,
        placed=by_node(instances),
        risk={a["node"]: a for a in risk},
    )

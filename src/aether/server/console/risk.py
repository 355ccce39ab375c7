"""The risk and decisions page (``/ui/risk``) and a node's risk history (``/ui/risk/{node}``).

Each live node with its latest assessment and the fire drill (start/stop, an
operator's), the signals coming in, the controller's decisions (filtered by
layer, kind, outcome and target in the query string) and the migrations they
caused, all live from the event stream.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Form, Query
from fastapi.responses import RedirectResponse, Response

from aether.server.console.view import Action, Page

__all__ = ["router"]

router = APIRouter()

KINDS = ("scale", "drain", "undrain", "advice", "rebalance")
OUTCOMES = ("applied", "refused", "failed")
FEED_SIZE = 25


@router.get("/risk")
async def risk(
    view: Page,
    layer: Annotated[int | None, Query(ge=1, le=3)] = None,
    kind: str = "",
    outcome: str = "",
    target: str = "",
    node: str = "",
) -> Response:
    filters: dict[str, Any] = {"layer": layer, "kind": kind, "outcome": outcome, "target": target}
    status, assessments, drill, signals, decisions, migrations = await asyncio.gather(
        view.api.get("/api/v1/status"),
        view.api.get("/api/v1/risk"),
        view.api.get("/api/v1/drill"),
        view.api.get("/api/v1/signals", node=node, limit=FEED_SIZE),
        view.api.get("/api/v1/decisions", limit=FEED_SIZE, **filters),
        view.api.get("/api/v1/migrations", limit=10),
    )
    by_node: dict[str, Any] = {a["node"]: a for a in assessments}
    live = {n["id"] for n in status["nodes"]}
    return view.render(
        "risk.html",
        page="risk",
        nodes=status["nodes"],
        risk=by_node,
        # assessed nodes that are not live now (lost, or between leases) are listed too
        gone=sorted(set(by_node) - live),
        drilled=set(drill["nodes"]),
        signals=signals,
        decisions=decisions,
        migrations=migrations,
        filters={**filters, "layer": layer or "", "node": node},
        kinds=KINDS,
        outcomes=OUTCOMES,
    )


@router.get("/risk/{node}")
async def node_risk(view: Page, node: str) -> Response:
    history = await view.api.get(f"/api/v1/risk/{quote(node, safe='')}", limit=100)
    signals = await view.api.get("/api/v1/signals", node=node, limit=FEED_SIZE)
    return view.render("risk_node.html", page="risk", node=node, history=history, signals=signals)


def _drill_done(verb: str, answer: dict[str, Any]) -> str:
    if verb == "start":
        return (
            f"Fire drill started on {answer['node']}: the spot price spikes from "
            f"{answer['base_price']:g} to {answer['spike_price']:g} with a rebalance notice"
        )
    nodes = ", ".join(answer["nodes"]) or "no node (none was running)"
    return f"Fire drill stopped on {nodes}"


@router.post("/risk/drill/{verb}")
async def drill(
    view: Action, verb: Literal["start", "stop"], node: Annotated[str, Form()] = ""
) -> Response:
    answer = await view.api.post(f"/api/v1/drill/{verb}", {"node": node} if node else {})
    return RedirectResponse(f"/ui/risk?done={quote(_drill_done(verb, answer))}", status_code=303)

"""The node pages: ``/ui/nodes`` (every node, filtered) and ``/ui/nodes/{node}`` (one node).

A node's page shows what its handshake turned on (and why not), its telemetry as
charts (``charts.js``: the last 5 minutes live, the last 2 hours from the
leader's window, roll-ups beyond), its instances, its risk assessment with the
evidence and recent history, and the drain / undrain buttons (operator).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query
from fastapi.responses import RedirectResponse, Response

from aether.server.console.client import ApiError
from aether.server.console.view import Action, ConsoleError, Page, View, paginate

__all__ = ["RANGES", "STATES", "evidence", "router"]

router = APIRouter()

STATES = ("ready", "draining", "down", "revoked")
#: the node page's chart ranges (seconds): live, the leader's window, roll-ups
RANGES = {300: "Last 5 min (live)", 7200: "Last 2 h", 86400: "Last 24 h (per minute)"}
PAGE_SIZE = 50
RISK_HISTORY = 20


def _filtered(nodes: list[dict[str, Any]], state: str, driver: str) -> list[dict[str, Any]]:
    return [
        n
        for n in nodes
        if (not state or n["state"] == state)
        and (not driver or driver in n["capabilities"]["drivers"])
    ]


def _check_state(state: str) -> None:
    if state and state not in STATES:
        raise ConsoleError(
            400,
            f"Unknown node state {state[:40]!r}: use one of {', '.join(STATES)}.",
            "bad_request",
        )


def _page_link(state: str, driver: str, number: int) -> str:
    query = {k: v for k, v in (("state", state), ("driver", driver)) if v}
    if number > 1:
        query["page"] = str(number)
    return "/ui/nodes" + (f"?{urlencode(query)}" if query else "")


@router.get("/nodes")
async def node_list(view: Page, state: str = "", driver: str = "", page: int = 1) -> Response:
    _check_state(state)
    nodes, risk, metrics = await asyncio.gather(
        view.api.get("/api/v1/nodes"),
        view.api.get("/api/v1/risk"),
        view.api.get("/api/v1/metrics"),
    )
    shown = _filtered(nodes, state, driver)
    listed, number, pages = paginate(shown, page, PAGE_SIZE)
    return view.render(
        "nodes.html",
        page="nodes",
        nodes=listed,
        total=len(nodes),
        matching=len(shown),
        states=STATES,
        drivers=sorted({d for n in nodes for d in n["capabilities"]["drivers"]}),
        state=state,
        driver=driver,
        risk={a["node"]: a for a in risk},
        now=(metrics or {}).get("nodes", {}),
        number=number,
        pages=pages,
        previous=_page_link(state, driver, number - 1) if number > 1 else "",
        next=_page_link(state, driver, number + 1) if number < pages else "",
    )


async def _risk_history(view: View, node: str) -> list[dict[str, Any]]:
    """The node's recorded assessments, newest first; none yet is an empty list."""
    try:
        found: list[dict[str, Any]] = await view.api.get(
            f"/api/v1/risk/{quote(node)}", limit=RISK_HISTORY
        )
    except ApiError as exc:
        if exc.status == 404:
            return []
        raise
    return found


def _figure(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def evidence(inputs: dict[str, Any]) -> list[tuple[str, str]]:
    """The risk assessment's inputs as (rule or figure, what it saw) lines, Nones left out."""
    lines = []
    for name, value in sorted(inputs.items()):
        if isinstance(value, dict):
            seen = ", ".join(f"{k} {_figure(v)}" for k, v in value.items() if v is not None)
            lines.append((name, seen))
        else:
            lines.append((name, _figure(value)))
    return lines


def _check_range(seconds: int) -> None:
    if seconds not in RANGES:
        choices = ", ".join(str(r) for r in RANGES)
        raise ConsoleError(400, f"Unknown chart range {seconds}: use one of {choices}.")


@router.get("/nodes/{node}")
async def node_detail(
    view: Page, node: str, seconds: Annotated[int, Query(alias="range")] = 300
) -> Response:
    _check_range(seconds)
    nodes, instances, history, latest = await asyncio.gather(
        view.api.get("/api/v1/nodes"),
        view.api.get("/api/v1/instances", node=node),
        _risk_history(view, node),
        view.api.get("/api/v1/risk"),
    )
    found = next((n for n in nodes if n["id"] == node), None)
    if found is None:
        raise ConsoleError(404, f"There is no node {node[:128]!r}.", code="not_found")
    current = next((a for a in latest if a["node"] == node), None)
    risk = current or (history[0] if history else None)
    return view.render(
        "node.html",
        page="nodes",
        node=found,
        instances=sorted(instances, key=lambda i: (i["app"], i["n"])),
        risk=risk,
        history=history,
        evidence=evidence(risk["inputs"]) if risk else [],
        ranges=RANGES,
        range=seconds,
    )


def _done(node: str, what: str) -> Response:
    return RedirectResponse(f"/ui/nodes/{quote(node)}?done={quote(what)}", status_code=303)


@router.post("/nodes/{node}/drain")
async def drain(view: Action, node: str) -> Response:
    answer = await view.api.post(f"/api/v1/nodes/{quote(node)}/drain")
    moves = len(answer.get("migrations", []))
    return _done(node, f"Node {node} is draining: {moves} instance(s) moving off it.")


@router.post("/nodes/{node}/undrain")
async def undrain(view: Action, node: str) -> Response:
    await view.api.post(f"/api/v1/nodes/{quote(node)}/undrain")
    return _done(node, f"Node {node} takes new instances again.")

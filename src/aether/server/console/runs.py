"""The runs pages: ``/ui/runs`` (the tenant's runs of agents, filtered by status) and
``/ui/runs/{id}`` (one run as a live timeline of its steps).

The run view shows each step in order: model calls (text, tokens, cost, duration) and
tool calls (arguments, the policy's decision with its reasons and enforcement ids, the
result, who approved or rejected it). While the run is active the page's ``runs.js``
reads the page again every second or two and replaces its live region, so it follows
the run without a reload; it stops once the run is final. Approve / Reject a tool call
waiting for a person and Cancel post through the API as the visitor (operators+).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query
from fastapi.responses import RedirectResponse, Response

from aether.agents.runs import FINAL_STATUSES, RUN_STATUSES
from aether.server.console.view import Action, Page

__all__ = ["PAGE_SIZE", "ms", "router", "run_facts"]

router = APIRouter()

PAGE_SIZE = 100  # runs on /ui/runs


def _api_run(run_id: str) -> str:
    return f"/api/v1/runs/{quote(run_id, safe='')}"


def _ui_run(run_id: str, done: str = "") -> str:
    return f"/ui/runs/{quote(run_id, safe='')}" + (f"?{urlencode({'done': done})}" if done else "")


def ms(value: float | None) -> str:
    """'840 ms', '2.4 s', '3 min 4 s' for a duration in milliseconds; '-' if unknown."""
    if value is None:
        return "-"
    if value < 1000:
        return f"{value:.0f} ms"
    seconds = value / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s"


def run_facts(run: dict[str, Any]) -> dict[str, Any]:
    """What the run view adds to the API's run: whether it is active and its totals."""
    return {
        "active": run["status"] not in FINAL_STATUSES,
        "tokens": int(run["tokens_in"]) + int(run["tokens_out"]),
    }


@router.get("/runs")
async def runs(
    view: Page,
    status: Annotated[str, Query(max_length=32)] = "",
    agent: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    found = await view.api.get("/api/v1/runs", status=status, agent=agent, limit=PAGE_SIZE)
    return view.render(
        "runs.html",
        page="runs",
        runs=found["runs"],
        status=status,
        agent=agent,
        statuses=RUN_STATUSES,
        page_size=PAGE_SIZE,
    )


@router.get("/runs/{run_id}")
async def run(view: Page, run_id: str) -> Response:
    found = await view.api.get(_api_run(run_id))
    return view.render("run.html", page="runs", run=found, ms=ms, **run_facts(found))


@router.post("/runs/{run_id}/approvals")
async def decide(
    view: Action,
    run_id: str,
    decision: Annotated[str, Form(max_length=16)],
    step: Annotated[int | None, Form()] = None,
    reason: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    body: dict[str, Any] = {"decision": decision, "reason": reason.strip()}
    if step is not None:
        body["step"] = step
    decided = await view.api.post(f"{_api_run(run_id)}/approvals", body)
    verb = "Approved" if decided["status"] == "approved" else "Rejected"
    done = f"{verb} the call to {decided['tool_id']} (step {decided['seq']})."
    return RedirectResponse(_ui_run(run_id, done), status_code=303)


@router.post("/runs/{run_id}/cancel")
async def cancel(view: Action, run_id: str) -> Response:
    found = await view.api.post(f"{_api_run(run_id)}/cancel")
    return RedirectResponse(_ui_run(run_id, f"Run {found['id']} is {found['status']}."), 303)

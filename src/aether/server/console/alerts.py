"""The alerts page (``/ui/alerts``): alerts the caller may see, with their webhook
deliveries and runbook output, and the silences."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.responses import Response

from aether.server.console.view import Page

__all__ = ["router"]

router = APIRouter()


@router.get("/alerts")
async def alerts(view: Page, state: str = "") -> Response:
    params = {"state": state} if state in ("pending", "firing", "resolved") else {}
    found, silences = await asyncio.gather(
        view.api.get("/api/v1/alerts", **params),
        view.api.get("/api/v1/alerts/silences"),
    )
    for silence in silences:
        ends = datetime.fromtimestamp(silence["ends_at"], UTC)
        silence["ends"] = ends.strftime("%Y-%m-%d %H:%M:%S UTC")
    return view.render(
        "alerts.html", page="alerts", alerts=found, silences=silences, state=params.get("state", "")
    )

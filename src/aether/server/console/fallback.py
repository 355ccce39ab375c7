"""Any other ``/ui`` address: sign in first (so no address hints at what exists), then 404.

Included after every page's router, so it only answers what none of them does.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from aether.server.console.view import ConsoleError, Page

__all__ = ["router"]

router = APIRouter()


@router.get("/{path:path}")
async def not_found(path: str, view: Page) -> Response:
    raise ConsoleError(404, f"There is no console page at /ui/{path[:200]}.", code="not_found")

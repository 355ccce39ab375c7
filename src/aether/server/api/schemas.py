"""``GET /api/v1/schemas``: the message, record and event schemas with their versions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from aether.model.schemas import catalogue
from aether.server.http.auth import Caller

router = APIRouter(tags=["schemas"])


@router.get("/schemas")
async def list_schemas(caller: Caller) -> dict[str, Any]:
    """Every node↔server message, stored record and event payload this server speaks,
    each with its version and JSON schema (any role)."""
    return {"schemas": catalogue()}

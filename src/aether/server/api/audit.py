"""The audit trail: ``GET /api/v1/audit`` (a page, or every event as JSON lines) and
``GET /api/v1/audit/verify`` (walk the hash chain).

A tenant's admins see their tenant's events; the cluster admin (an admin of the
default tenant) sees every event, the cluster's own (failed sign-ins, the
controller's node drains) included. Other roles are refused (403).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from aether.model.audit import AuditEventOut, AuditPage, AuditVerdict
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Admin, ClusterAdmin
from aether.store.records.schema import AuditEventRow

__all__ = ["NDJSON", "router"]

router = APIRouter(tags=["audit"])
Ctx = Annotated[ServerContext, Depends(get_context)]
NDJSON = "application/x-ndjson"
_EXPORT_PAGE = 500


def event_out(row: AuditEventRow) -> AuditEventOut:
    return AuditEventOut.model_validate(row, from_attributes=True)


@router.get(
    "/audit",
    response_model=AuditPage,
    responses={200: {"content": {NDJSON: {"schema": {"type": "string"}}}}},
)
async def list_audit(
    request: Request,
    caller: Admin,
    ctx: Ctx,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    action: Annotated[str | None, Query(max_length=160)] = None,
    target: Annotated[str | None, Query(max_length=255)] = None,
    outcome: Annotated[str | None, Query(pattern="^(ok|refused|failed)$")] = None,
    since: Annotated[float | None, Query(ge=0, le=1e11)] = None,
    until: Annotated[float | None, Query(ge=0, le=1e11)] = None,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    before: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    format: Annotated[str | None, Query(pattern="^(json|jsonl)$")] = None,
) -> Response | AuditPage:
    """Newest first, ``limit`` at a time (``before``: older than that id); with ``after``,
    oldest first from that id (to follow). ``format=jsonl`` (or ``Accept:
    application/x-ndjson``) exports every matching event, oldest first, one per line."""
    filters: dict[str, Any] = {
        "actor": actor,
        "action": action,
        "target": target,
        "outcome": outcome,
        "since": since,
        "until": until,
    }
    tenant_id = None if caller.cluster_admin else caller.tenant_id
    jsonl = format == "jsonl" or (format is None and NDJSON in request.headers.get("accept", ""))
    if jsonl:
        lines = _export(ctx, tenant_id, filters, after or 0, before)
        return StreamingResponse(lines, media_type=NDJSON)
    rows = await ctx.records.list_audit(
        tenant_id, **filters, after=after, before=before, limit=limit
    )
    cursor = rows[-1].id if len(rows) == limit else None
    return AuditPage(events=[event_out(r) for r in rows], cursor=cursor)


async def _export(
    ctx: ServerContext,
    tenant_id: str | None,
    filters: dict[str, Any],
    after: int,
    before: int | None,
) -> AsyncIterator[bytes]:
    while True:
        rows = await ctx.records.list_audit(
            tenant_id, **filters, after=after, before=before, limit=_EXPORT_PAGE
        )
        for row in rows:
            yield event_out(row).model_dump_json().encode() + b"\n"
        if len(rows) < _EXPORT_PAGE:
            return
        after = rows[-1].id


@router.get("/audit/verify")
async def verify_audit(caller: ClusterAdmin, ctx: Ctx) -> AuditVerdict:
    """Walk the whole chain (every tenant's events): intact, or the first row that breaks it."""
    return await ctx.records.verify_audit()

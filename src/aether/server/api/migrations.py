"""Migration and snapshot API.

- ``POST /instances/migrate`` (operator): move an instance, to a node or anywhere;
- ``GET /migrations[?app=]``, ``GET /migrations/{id}``: how moves went;
- ``POST /snapshots`` (node): store a checkpoint of an instance, verified
  against its digest, content-addressed in the artifact registry;
- ``GET /snapshots[?app=]``: a tenant's snapshots with their retention tier;
- ``GET /snapshots/{digest}`` (node, operator): download one.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from aether.artifacts import parse_digest
from aether.artifacts.scan import scanned
from aether.core.snapshots import tier_of
from aether.errors import BadRequestError, ForbiddenError, NotFoundError
from aether.model.cluster import InstanceRecord
from aether.model.migrations import MigrateIn, MigrationOut, SnapshotOut
from aether.server.api.artifacts import (
    DIGEST_HEADER,
    GZIP_ANSWER,
    check_node_read,
    claimed_digest,
    gzip_download,
    request_chunks,
)
from aether.server.context import ServerContext, get_context
from aether.server.http.audit import refuse
from aether.server.http.auth import ArtifactReader, Caller, NodeCaller, Operator
from aether.server.services.migrations import migration_out, request_migration
from aether.store.records.repo import epoch
from aether.store.records.schema import SnapshotRecord

__all__ = ["DIGEST_HEADER", "INSTANCE_HEADER", "KIND_HEADER", "router"]

router = APIRouter(tags=["migrations"])
Ctx = Annotated[ServerContext, Depends(get_context)]

INSTANCE_HEADER = "X-Aether-Instance"
KIND_HEADER = "X-Aether-Snapshot-Kind"
_KINDS = ("cooperative", "criu")


@router.post("/instances/migrate", status_code=202)
async def migrate(body: MigrateIn, caller: Operator, ctx: Ctx) -> MigrationOut:
    """Ask to move an instance; the leader does it (``GET /migrations/{id}`` follows it)."""
    row = await request_migration(ctx, caller.tenant_id, body.instance, body.to)
    return migration_out(row)


@router.get("/migrations")
async def list_migrations(
    caller: Caller,
    ctx: Ctx,
    app: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[MigrationOut]:
    rows = await ctx.records.list_migrations(caller.tenant_id, app, limit)
    return [migration_out(row) for row in rows]


@router.get("/migrations/{migration_id}")
async def get_migration(migration_id: str, caller: Caller, ctx: Ctx) -> MigrationOut:
    return migration_out(await ctx.records.get_migration(caller.tenant_id, migration_id))


def snapshot_out(row: SnapshotRecord, now: float) -> SnapshotOut:
    created = epoch(row.created_at)
    return SnapshotOut(
        id=row.id,
        app=row.app,
        instance=row.instance,
        node=row.node,
        digest=row.digest,
        size_bytes=row.size_bytes,
        kind=row.kind,  # type: ignore[arg-type]
        tier=tier_of(max(0.0, now - created)),
        created_at=row.created_at,
    )


@router.post("/snapshots", status_code=201)
async def upload_snapshot(request: Request, caller: NodeCaller, ctx: Ctx) -> JSONResponse:
    """A node stores an instance's checkpoint (a ``tar.gz``); visible once verified."""
    digest = claimed_digest(request)
    kind = request.headers.get(KIND_HEADER, "cooperative")
    if kind not in _KINDS:
        raise BadRequestError(f"{KIND_HEADER} must be one of {', '.join(_KINDS)}, not {kind!r}")
    key = request.headers.get(INSTANCE_HEADER, "")
    kv = await ctx.store.get(key) if key.startswith("instances/") else None
    if kv is None:
        raise NotFoundError(f"instance {key!r} does not exist; a snapshot needs its instance")
    if not key.startswith(f"instances/{caller.node}/"):
        raise refuse(
            request, caller, key, f"the instance is not node {caller.node!r}'s: not its snapshot"
        )
    record = InstanceRecord.model_validate_json(kv.value)

    async with ctx.uploads.slot("artifact") as slot:
        chunks = scanned(slot.meter(request_chunks(request)))  # restored by safe_extract
        result = await ctx.registry.write_stream(chunks, digest)
    row = await ctx.records.add_snapshot(
        tenant_id=record.tenant,
        app=record.app,
        instance=key,
        node=record.node,
        digest=result.digest,
        size_bytes=result.size_bytes,
        kind=kind,
    )
    out = snapshot_out(row, time.time()).model_dump(mode="json")
    return JSONResponse(out, status_code=201)


@router.get("/snapshots")
async def list_snapshots(
    caller: Caller,
    ctx: Ctx,
    app: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[SnapshotOut]:
    now = time.time()
    return [
        snapshot_out(row, now)
        for row in await ctx.records.list_snapshots(caller.tenant_id, app, limit)
    ]


@router.get(
    "/snapshots/{digest}",
    response_class=StreamingResponse,
    responses=GZIP_ANSWER,
)
async def download_snapshot(
    digest: str, request: Request, caller: ArtifactReader, ctx: Ctx
) -> StreamingResponse:
    """The snapshot's bytes: a node restores one assigned to it; operators may fetch
    their tenant's."""
    if caller.role not in ("node", "admin", "operator"):
        raise ForbiddenError(
            f"role {caller.role!r} may not download snapshots; it needs node, operator or admin"
        )
    digest = parse_digest(digest)
    tenant = None if caller.role == "node" else caller.tenant_id
    size = await ctx.registry.size(digest)
    if size is None or not await ctx.records.has_snapshot(tenant, digest):
        raise NotFoundError(f"snapshot {digest} not found")
    if caller.role == "node":
        await check_node_read(request, ctx, caller, digest, "snapshot")
    return await gzip_download(ctx, digest, size)

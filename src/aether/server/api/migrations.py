"""Migration and snapshot API.

- ``POST /instances/migrate`` (operator): move an instance, to a node or anywhere;
- ``GET /migrations[?app=]``, ``GET /migrations/{id}``: how moves went;
- ``POST /snapshots`` (node): store a checkpoint of an instance, verified
  against its digest, content-addressed in the artifact registry;
- ``GET /snapshots[?app=]``: a tenant's snapshots with their retention tier;
- ``GET /snapshots/{digest}`` (node, operator): download one;
- ``POST /apps/{app}/snapshots/{digest}/restore`` (operator): replace the app's
  instance by one restored from that snapshot (an orphan, or any other).
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
from aether.model.app import validate_app_name
from aether.model.cluster import InstanceRecord
from aether.model.migrations import MigrateIn, MigrationOut, SnapshotOut, SnapshotRestoreIn
from aether.model.names import cluster_name, shown_name
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
from aether.server.services.recovery import orphan_blueprint, record_orphan, restore_snapshot
from aether.store.records import Principal
from aether.store.records.repo import epoch, utc
from aether.store.records.schema import SnapshotRecord

__all__ = [
    "DIGEST_HEADER",
    "INSTANCE_HEADER",
    "KIND_HEADER",
    "TAKEN_AT_HEADER",
    "UNCHANGED_HEADER",
    "router",
]

router = APIRouter(tags=["migrations"])
Ctx = Annotated[ServerContext, Depends(get_context)]

INSTANCE_HEADER = "X-Aether-Instance"
KIND_HEADER = "X-Aether-Snapshot-Kind"
UNCHANGED_HEADER = "X-Aether-Snapshot-Unchanged"  # periodic: the state is still DIGEST
TAKEN_AT_HEADER = "X-Aether-Taken-At"  # orphaned: when the instance last took writes
_KINDS = ("cooperative", "criu", "periodic", "orphaned")


@router.post("/instances/migrate", status_code=202)
async def migrate(body: MigrateIn, caller: Operator, ctx: Ctx) -> MigrationOut:
    """Ask to move an instance; the leader does it (``GET /migrations/{id}`` follows it)."""
    row = await request_migration(ctx, caller.tenant_id, body.instance, body.to)
    return _shown(caller, migration_out(row))


def _shown(caller: Principal, out: MigrationOut) -> MigrationOut:
    """A migration as the caller reads it: its own app by its plain name."""
    return out.model_copy(update={"app": shown_name(out.app, caller.tenant)})


def _in_cluster(caller: Principal, app: str | None) -> str | None:
    """A filter's app by its cluster name (the records' key; an invalid name is a 400)."""
    return None if app is None else cluster_name(validate_app_name(app), caller.tenant)


@router.get("/migrations")
async def list_migrations(
    caller: Caller,
    ctx: Ctx,
    app: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[MigrationOut]:
    rows = await ctx.records.list_migrations(caller.tenant_id, _in_cluster(caller, app), limit)
    return [_shown(caller, migration_out(row)) for row in rows]


@router.get("/migrations/{migration_id}")
async def get_migration(migration_id: str, caller: Caller, ctx: Ctx) -> MigrationOut:
    row = await ctx.records.get_migration(caller.tenant_id, migration_id)
    return _shown(caller, migration_out(row))


def snapshot_out(row: SnapshotRecord, now: float, reader: str) -> SnapshotOut:
    """The snapshot as tenant ``reader`` (a tenant name) reads it."""
    created = epoch(row.created_at)
    return SnapshotOut(
        id=row.id,
        app=shown_name(row.app, reader),
        instance=row.instance,
        node=row.node,
        digest=row.digest,
        size_bytes=row.size_bytes,
        kind=row.kind,  # type: ignore[arg-type]
        tier=tier_of(max(0.0, now - created)),
        status=row.status,  # type: ignore[arg-type]
        created_at=row.created_at,
        taken_at=row.taken_at or row.created_at,
    )


def _taken_at(request: Request) -> float | None:
    raw = request.headers.get(TAKEN_AT_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequestError(f"{TAKEN_AT_HEADER} must be seconds since the epoch") from None
    if not 0 < value < 1e11:
        raise BadRequestError(f"{TAKEN_AT_HEADER} must be seconds since the epoch")
    return value


@router.post("/snapshots", status_code=201)
async def upload_snapshot(request: Request, caller: NodeCaller, ctx: Ctx) -> JSONResponse:
    """A node stores an instance's checkpoint (a ``tar.gz``); visible once verified.

    ``periodic`` with ``X-Aether-Snapshot-Unchanged: 1`` and no body: the instance's
    state still packs to DIGEST (200; 404 when the server has no such snapshot of
    it, then the node sends it). ``orphaned``: the state of an instance the leader
    replaced while its node was away (the instance no longer needs to exist).
    """
    digest = claimed_digest(request)
    kind = request.headers.get(KIND_HEADER, "cooperative")
    if kind not in _KINDS:
        raise BadRequestError(f"{KIND_HEADER} must be one of {', '.join(_KINDS)}, not {kind!r}")
    key = request.headers.get(INSTANCE_HEADER, "")
    if kind == "orphaned":
        return await _upload_orphan(request, caller, key, digest, ctx)
    kv = await ctx.store.get(key) if key.startswith("instances/") else None
    if kv is None:
        raise NotFoundError(f"instance {key!r} does not exist; a snapshot needs its instance")
    if not key.startswith(f"instances/{caller.node}/"):
        raise refuse(
            request, caller, key, f"the instance is not node {caller.node!r}'s: not its snapshot"
        )
    record = InstanceRecord.model_validate_json(kv.value)
    if kind == "periodic" and request.headers.get(UNCHANGED_HEADER) == "1":
        confirmed = await ctx.records.confirm_snapshot(key, digest)
        if confirmed is None:
            raise NotFoundError(f"no snapshot {digest} of {key}: send it")
        return JSONResponse(
            snapshot_out(confirmed, time.time(), caller.tenant).model_dump(mode="json")
        )

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
    out = snapshot_out(row, time.time(), caller.tenant).model_dump(mode="json")
    return JSONResponse(out, status_code=201)


async def _upload_orphan(
    request: Request, caller: Principal, key: str, digest: str, ctx: ServerContext
) -> JSONResponse:
    """Store a returning node's newer state as ``orphaned``, with its event.

    The instance is gone from the state store; that it ran on the caller's node is
    proven by a checkpoint of it stored from there (else 403).
    """
    node = caller.node or ""
    taken = _taken_at(request)
    bp = await orphan_blueprint(ctx, node, key)
    if not await ctx.records.checkpointed_on(key, node):
        raise refuse(
            request,
            caller,
            key,
            f"no checkpoint of {key} was stored from node {node!r}: not its orphan",
        )
    async with ctx.uploads.slot("artifact") as slot:
        chunks = scanned(slot.meter(request_chunks(request)))
        result = await ctx.registry.write_stream(chunks, digest)
    row = await ctx.records.add_snapshot(
        tenant_id=bp.tenant,
        app=bp.app,
        instance=key,
        node=node,
        digest=result.digest,
        size_bytes=result.size_bytes,
        kind="orphaned",
        status="orphaned",
        taken_at=utc(taken) if taken is not None else None,
    )
    await record_orphan(ctx, bp, row)
    return JSONResponse(
        snapshot_out(row, time.time(), caller.tenant).model_dump(mode="json"), status_code=201
    )


@router.get("/snapshots")
async def list_snapshots(
    caller: Caller,
    ctx: Ctx,
    app: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[SnapshotOut]:
    now = time.time()
    return [
        snapshot_out(row, now, caller.tenant)
        for row in await ctx.records.list_snapshots(
            caller.tenant_id, _in_cluster(caller, app), limit
        )
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


@router.post("/apps/{app}/snapshots/{digest}/restore", status_code=202)
async def restore(
    app: str,
    digest: str,
    caller: Operator,
    ctx: Ctx,
    body: SnapshotRestoreIn | None = None,
) -> MigrationOut:
    """Replace the app's instance by one restored from the snapshot ``digest``.

    A stateful migration (``GET /migrations/{id}`` follows it): the instance is
    checkpointed as it stops (its state is kept as a snapshot too), and its
    replacement restores ``digest``. An orphan restored is ``restored`` from then on.
    """
    digest = parse_digest(digest)
    row = await restore_snapshot(
        ctx,
        caller.tenant_id,
        cluster_name(validate_app_name(app), caller.tenant),
        digest,
        body.n if body is not None else None,
    )
    return _shown(caller, migration_out(row))

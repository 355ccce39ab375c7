"""Incremental uploads: per-file blobs, and artifacts assembled from them.

A redeploy after a small change sends only the files the server lacks:

1. ``POST /api/v1/blobs/missing`` ``{digests}`` → ``{missing}``: which contents to send;
2. ``PUT /api/v1/blobs/{digest}`` for each: streamed, verified before visible;
3. ``POST /api/v1/artifacts/assemble`` ``{digest, plan}``: the server writes the
   canonical archive from the plan and its blobs (reusing the compressed member of
   every content it compressed before, ``aether.artifacts.framing``), checks it
   hashes to ``digest``
   and stores it like an upload (``{digest, size_bytes, duplicate, verified}``).

Blobs are per tenant (see ``aether.artifacts.blobs``; on S3 they live in the artifacts
bucket, so blobs sent through one server serve an assembly on another), and an assembled artifact
is recorded for the caller's tenant only after the bytes built from *its* blobs
hashed to the digest, so knowing a digest never grants access to it. If the
server's tar/zlib write different bytes than the client's, assembly answers
``digest_mismatch`` and the client uploads the whole archive instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from aether.artifacts import parse_digest
from aether.artifacts.blobs import missing_blobs_error
from aether.artifacts.members import MEMBERS
from aether.artifacts.pack import write_plan
from aether.artifacts.plan import MAX_PLAN_ENTRIES, PackPlan
from aether.artifacts.registry import file_chunks
from aether.artifacts.scan import scanned
from aether.errors import BadRequestError, DigestMismatchError, PayloadTooLargeError
from aether.server.api.artifacts import UploadOut, request_chunks, stored
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Operator
from aether.server.http.limits import MAX_ASSEMBLE_BODY_BYTES
from aether.server.services.signatures import read_signature_headers, record_signature

__all__ = ["MAX_ASSEMBLE_BODY_BYTES", "router"]

router = APIRouter(tags=["artifacts"])
Ctx = Annotated[ServerContext, Depends(get_context)]

#: Compressed data members by content (``aether.artifacts.members.MEMBERS``): an
#: assembly compresses only the contents no earlier assembly or whole upload in this
#: process compressed (a pure function of the content, so shared by every tenant;
#: each still needs the blob itself, checked first).


class MissingIn(BaseModel):
    digests: list[str] = Field(max_length=MAX_PLAN_ENTRIES)


class MissingOut(BaseModel):
    missing: list[str]


class BlobOut(BaseModel):
    digest: str
    size_bytes: int
    duplicate: bool


@router.post("/blobs/missing")
async def missing_blobs(body: MissingIn, caller: Operator, ctx: Ctx) -> MissingOut:
    """Which of these file contents this tenant has not uploaded yet (request order)."""
    store = ctx.blobs.for_tenant(caller.tenant_id)
    return MissingOut(missing=await store.missing(body.digests))


@router.put("/blobs/{digest}", status_code=201)
async def put_blob(digest: str, request: Request, caller: Operator, ctx: Ctx) -> BlobOut:
    """Store one file content under its sha256; a mismatch stores nothing."""
    digest = parse_digest(digest)
    store = ctx.blobs.for_tenant(caller.tenant_id)
    async with ctx.uploads.slot("blob") as slot:
        result = await store.write_stream(slot.meter(request_chunks(request)), digest)
    return BlobOut(digest=result.digest, size_bytes=result.size_bytes, duplicate=result.duplicate)


async def _read_capped(request: Request, limit: int) -> bytes:
    data = bytearray()
    async for chunk in request_chunks(request):
        data += chunk
        if len(data) > limit:
            raise PayloadTooLargeError(f"request body exceeds {limit} bytes")
    return bytes(data)


def _parse_assemble(raw: bytes, max_bytes: int) -> tuple[str, PackPlan]:
    try:
        body: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"invalid request: body is not JSON ({exc})") from None
    if not isinstance(body, dict) or set(body) != {"digest", "plan"}:
        raise BadRequestError('invalid request: send exactly {"digest": ..., "plan": ...}')
    return parse_digest(body["digest"]), PackPlan.from_dict(body["plan"], max_bytes=max_bytes)


@router.post("/artifacts/assemble", status_code=201)
async def assemble_artifact(request: Request, caller: Operator, ctx: Ctx) -> UploadOut:
    """Build the artifact from the plan and this tenant's blobs; store it once it verifies."""
    signed = read_signature_headers(request)  # checked before any work, like an upload
    raw = await _read_capped(request, MAX_ASSEMBLE_BODY_BYTES)
    digest, plan = _parse_assemble(raw, ctx.settings.max_artifact_bytes)
    del raw
    size = await ctx.registry.size(digest)
    if size is not None and await ctx.records.has_artifact(caller.tenant_id, digest):
        verified = await record_signature(ctx, caller.tenant_id, digest, signed)
        return UploadOut(digest=digest, size_bytes=size, duplicate=True, verified=verified)
    store = ctx.blobs.for_tenant(caller.tenant_id)
    blob_digests = plan.blob_digests()
    missing = await store.missing(blob_digests)
    if missing:
        raise missing_blobs_error(missing)

    # blobs whose compressed member is cached are not read (nor fetched, from S3)
    pinned = MEMBERS.pin([d[len("sha256:") :] for d in blob_digests])
    to_read = [d for d in blob_digests if d[len("sha256:") :] not in pinned.held]
    async with ctx.uploads.slot("assemble"), store.staged(to_read) as staging:
        fd, tmp_name = staging.temp_file()
        try:
            with os.fdopen(fd, "wb") as sink:
                built = await asyncio.to_thread(write_plan, plan, sink, staging.open_blob, pinned)
            if built.digest != digest:
                raise DigestMismatchError(
                    f"the archive assembled from the plan has digest {built.digest}, "
                    f"not {digest}: this server's tar/zlib write other bytes than the "
                    "client's; upload the whole archive (POST /api/v1/artifacts)"
                )
            if built.size_bytes > ctx.settings.max_artifact_bytes:
                raise PayloadTooLargeError(
                    f"the assembled artifact exceeds the {ctx.settings.max_artifact_bytes}-byte "
                    "limit of this registry"
                )
            # the plan was checked entry by entry; the bytes get the upload's scan too
            result = await ctx.registry.write_stream(scanned(file_chunks(tmp_name)), digest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
    return await stored(ctx, caller, result, signed)

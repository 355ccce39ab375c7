"""Artifact registry API: content-addressed, verified before visible."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from aether.artifacts import parse_digest
from aether.artifacts.members import MEMBERS
from aether.artifacts.registry import WriteResult
from aether.artifacts.scan import scanned
from aether.errors import BadRequestError, NotFoundError
from aether.server.context import ServerContext, get_context
from aether.server.http.audit import refuse
from aether.server.http.auth import ArtifactReader, Caller, Operator
from aether.server.services.drain import node_may_read
from aether.server.services.quotas import enforce_quota
from aether.server.services.seed_blobs import seed_in_background
from aether.server.services.signatures import (
    SignedUpload,
    read_signature_headers,
    record_signature,
)
from aether.store.records import Principal

__all__ = [
    "BINARY",
    "GZIP_ANSWER",
    "TASK_HEADER",
    "check_node_read",
    "gzip_download",
    "router",
    "stored",
]

router = APIRouter(tags=["artifacts"])
Ctx = Annotated[ServerContext, Depends(get_context)]

DIGEST_HEADER = "X-Aether-Artifact-Digest"
TASK_HEADER = "X-Aether-Task"  # a node downloading for a task it holds (job:run) names it
BINARY = {"type": "string", "format": "binary"}  # a non-JSON answer, in the OpenAPI document
#: How a route answering with ``gzip_download`` documents its 200.
GZIP_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/gzip": {"schema": BINARY}}}
}


def claimed_digest(request: Request) -> str:
    """The upload's ``X-Aether-Artifact-Digest`` in canonical form.

    400 ``missing_digest`` when the header is absent (or empty), ``invalid_digest``
    when it is not a sha256 (``parse_digest``).
    """
    claimed = request.headers.get(DIGEST_HEADER)
    if not claimed:
        raise BadRequestError(
            f"missing {DIGEST_HEADER} header: send the sha256 of the archive "
            "(64 hex digits, optionally prefixed with 'sha256:')",
            code="missing_digest",
        )
    return parse_digest(claimed)


async def request_chunks(request: Request) -> AsyncIterator[bytes]:
    """The request body as it streams in; a client that goes away is a 400, not a 500."""
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise BadRequestError("upload interrupted: the client disconnected") from None


class UploadOut(BaseModel):
    digest: str
    size_bytes: int
    duplicate: bool
    verified: bool = False  # the X-Aether-Signature verified against a key of X-Aether-App


class SignatureOut(BaseModel):
    """An artifact's stored signature: null when it was uploaded unsigned."""

    digest: str
    signature: str | None  # base64 Ed25519 over the digest, as uploaded
    signed_by: str | None  # the fingerprint of the app key it verified against at upload


async def stored(
    ctx: ServerContext, caller: Principal, result: WriteResult, signed: SignedUpload | None
) -> UploadOut:
    """An upload's end, whole or assembled: the tenant's record, its signature checked."""
    if not await ctx.records.has_artifact(caller.tenant_id, result.digest):
        await enforce_quota(ctx, caller.tenant_id, {"artifact_bytes": result.size_bytes})
    await ctx.records.add_artifact(caller.tenant_id, result.digest, result.size_bytes)
    verified = await record_signature(ctx, caller.tenant_id, result.digest, signed)
    return UploadOut(
        digest=result.digest,
        size_bytes=result.size_bytes,
        duplicate=result.duplicate,
        verified=verified,
    )


async def gzip_download(ctx: ServerContext, digest: str, size: int) -> StreamingResponse:
    """The stored archive ``digest`` (an artifact or a snapshot) as a gzip download."""
    return StreamingResponse(
        await ctx.registry.open_chunks(digest),
        media_type="application/gzip",
        headers={"Content-Length": str(size), DIGEST_HEADER: digest},
    )


async def check_node_read(
    request: Request, ctx: ServerContext, caller: Principal, digest: str, what: str
) -> None:
    """A node reads only what is assigned to it: 403 and an audit line otherwise."""
    assert caller.node is not None
    if not await node_may_read(ctx, caller.node, digest, request.headers.get(TASK_HEADER)):
        raise refuse(
            request,
            caller,
            f"{what}/{digest}",
            f"no instance or task of node {caller.node!r} needs this {what}",
        )


async def _visible_size(
    request: Request, ctx: ServerContext, caller: Principal, digest: str
) -> int:
    """The blob's size if this caller may see it: its tenant uploaded it, or it is
    assigned to this node."""
    digest = parse_digest(digest)
    size = await ctx.registry.size(digest)
    if size is None or (
        caller.role != "node" and not await ctx.records.has_artifact(caller.tenant_id, digest)
    ):
        raise NotFoundError(f"artifact {digest} not found")
    if caller.role == "node":
        await check_node_read(request, ctx, caller, digest, "artifact")
    return size


@router.head("/artifacts/{digest}")
async def head_artifact(
    digest: str, request: Request, caller: ArtifactReader, ctx: Ctx
) -> Response:
    size = await _visible_size(request, ctx, caller, digest)
    return Response(headers={"Content-Length": str(size), DIGEST_HEADER: parse_digest(digest)})


@router.get(
    "/artifacts/{digest}",
    response_class=StreamingResponse,
    responses=GZIP_ANSWER,
)
async def get_artifact(
    digest: str, request: Request, caller: ArtifactReader, ctx: Ctx
) -> StreamingResponse:
    size = await _visible_size(request, ctx, caller, digest)
    return await gzip_download(ctx, parse_digest(digest), size)


def _declared_size(request: Request) -> int:
    """The upload's Content-Length, or 0 when it is not sent (then checked at its end)."""
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else 0


@router.post("/artifacts", status_code=201)
async def upload_artifact(request: Request, caller: Operator, ctx: Ctx) -> UploadOut:
    digest = claimed_digest(request)
    signed = read_signature_headers(request)  # checked before the body: a bad one stores nothing
    if not await ctx.records.has_artifact(caller.tenant_id, digest):  # refused before the body
        await enforce_quota(ctx, caller.tenant_id, {"artifact_bytes": _declared_size(request)})

    async with ctx.uploads.slot("artifact") as slot:  # AETHER_MAX_CONCURRENT_UPLOADS
        # judged as it streams by the node's own extraction rules: a hostile archive is
        # refused now with the code a node would give, and nothing is stored
        chunks = scanned(slot.meter(request_chunks(request)))
        result = await ctx.registry.write_stream(chunks, digest)
    answer = await stored(ctx, caller, result, signed)
    # its files become blobs, so the next deploy of the app sends only what changed
    seed_in_background(ctx, caller.tenant_id, digest, MEMBERS)
    return answer


@router.get("/artifacts/{digest}/sbom")
async def get_sbom(digest: str, caller: Caller, ctx: Ctx) -> dict[str, Any]:
    """The CycloneDX SBOM sent with the artifact's first deployment."""
    row = await ctx.records.artifact_row(caller.tenant_id, parse_digest(digest))
    if row.sbom is None:
        raise NotFoundError(f"artifact {row.digest} has no SBOM (deployed with --no-sbom?)")
    return row.sbom


@router.get("/artifacts/{digest}/signature")
async def get_signature(digest: str, caller: Caller, ctx: Ctx) -> SignatureOut:
    """The signature stored with the artifact, and which key verified it (if one did)."""
    row = await ctx.records.artifact_row(caller.tenant_id, parse_digest(digest))
    return SignatureOut(digest=row.digest, signature=row.signature, signed_by=row.signed_by)


@router.get("/artifacts/{digest}/manifest")
async def get_manifest(digest: str, caller: Caller, ctx: Ctx) -> dict[str, Any]:
    """Per-file path, size, sha256 and mode of the artifact."""
    row = await ctx.records.artifact_row(caller.tenant_id, parse_digest(digest))
    if row.manifest is None:
        raise NotFoundError(f"artifact {row.digest} has no recorded manifest")
    return row.manifest

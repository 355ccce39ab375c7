"""Signing API: an app's public keys, its settings, and signatures, provenance statements
and verification of stored artifacts."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response
from pydantic import BaseModel

from aether.artifacts import parse_digest
from aether.artifacts.provenance import MAX_ENVELOPE_BYTES, ProvenanceInvalidError
from aether.artifacts.signing import KeyFormatError, fingerprint, parse_public_key, public_key_b64
from aether.errors import BadRequestError, NotFoundError
from aether.model.app import validate_app_name
from aether.model.keys import AppSettingsIn, AppSettingsOut, PublicKeyIn, PublicKeyOut
from aether.server.api.artifacts import UploadOut
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Caller, Operator
from aether.server.services.provenance import record_provenance, verify_artifact
from aether.server.services.signatures import (
    APP_HEADER,
    SIGNATURE_HEADER,
    read_signature_headers,
    record_signature,
)
from aether.store.records import Principal
from aether.store.records.schema import App, PublicKey

__all__ = ["router"]

router = APIRouter(tags=["signing"])
Ctx = Annotated[ServerContext, Depends(get_context)]


async def _own_app(ctx: ServerContext, caller: Principal, name: str) -> App:
    """The caller's app ``name``, created if new (an app name is its tenant's own)."""
    validate_app_name(name)
    app = await ctx.records.find_app(caller.tenant_id, name)
    if app is not None:
        return app
    return await ctx.records.get_or_create_app(caller.tenant_id, name)


async def _existing_app(ctx: ServerContext, caller: Principal, name: str) -> App:
    return await ctx.records.get_app(caller.tenant_id, validate_app_name(name))


def _key_out(row: PublicKey) -> PublicKeyOut:
    return PublicKeyOut.model_validate(row, from_attributes=True)


def _settings_out(app: App) -> AppSettingsOut:
    return AppSettingsOut(
        app=app.name,
        require_signature=bool(app.require_signature),
        require_provenance=bool(app.require_provenance),
        retain_deployments=app.retain_deployments,
    )


@router.post("/apps/{app}/public-keys", status_code=201)
async def register_public_key(
    app: str, body: PublicKeyIn, caller: Operator, ctx: Ctx
) -> PublicKeyOut:
    try:
        key = parse_public_key(body.public_key)
    except KeyFormatError as exc:
        raise BadRequestError(f"invalid public_key: {exc} (an Ed25519 public key)") from None
    row = await _own_app(ctx, caller, app)
    fp = fingerprint(key)
    added = await ctx.records.add_public_key(
        caller.tenant_id,
        row,
        name=body.name or f"key-{fp.removeprefix('sha256:')[:12]}",
        public_key=public_key_b64(key),  # canonical spelling, whatever padding/space was sent
        fingerprint=fp,
    )
    return _key_out(added)


@router.get("/apps/{app}/public-keys")
async def list_public_keys(app: str, caller: Caller, ctx: Ctx) -> list[PublicKeyOut]:
    row = await _existing_app(ctx, caller, app)
    return [_key_out(k) for k in await ctx.records.list_public_keys(caller.tenant_id, row)]


@router.delete("/apps/{app}/public-keys/{key_id}", status_code=204)
async def delete_public_key(app: str, key_id: str, caller: Operator, ctx: Ctx) -> Response:
    row = await _existing_app(ctx, caller, app)
    await ctx.records.delete_public_key(caller.tenant_id, row, key_id)
    return Response(status_code=204)


@router.get("/apps/{app}/settings")
async def get_settings(app: str, caller: Caller, ctx: Ctx) -> AppSettingsOut:
    return _settings_out(await _existing_app(ctx, caller, app))


@router.put("/apps/{app}/settings")
async def put_settings(app: str, body: AppSettingsIn, caller: Operator, ctx: Ctx) -> AppSettingsOut:
    row = await _own_app(ctx, caller, app)
    values = body.model_dump(include=body.model_fields_set)
    for flag in ("require_signature", "require_provenance"):
        if values.get(flag, False) is None:
            del values[flag]  # null means "leave as it is"; the column is NOT NULL
    updated = await ctx.records.update_app_settings(caller.tenant_id, row, values)
    return _settings_out(updated)


@router.put("/artifacts/{digest}/signature")
async def sign_artifact(digest: str, request: Request, caller: Operator, ctx: Ctx) -> UploadOut:
    """Attach a signature to an artifact already stored (the upload was skipped)."""
    digest = parse_digest(digest)
    signed = read_signature_headers(request)
    if signed is None:
        raise BadRequestError(f"missing {SIGNATURE_HEADER} header: the base64 signature")
    size = await ctx.registry.size(digest)
    if size is None or not await ctx.records.has_artifact(caller.tenant_id, digest):
        raise NotFoundError(f"artifact {digest} not found; upload it first")
    verified = await record_signature(ctx, caller.tenant_id, digest, signed)
    return UploadOut(digest=digest, size_bytes=size, duplicate=True, verified=verified)


class ProvenanceOut(BaseModel):
    """An artifact's stored provenance: the DSSE envelope as uploaded, its statement
    decoded, and the fingerprint of the app key it verified against at upload (if one did)."""

    digest: str
    envelope: dict[str, Any]
    statement: dict[str, Any]
    signed_by: str | None


class ProvenanceUploadOut(BaseModel):
    digest: str
    verified: bool  # signed by a key registered for X-Aether-App
    signed_by: str | None


class CheckOut(BaseModel):
    name: str  # digest | signature | provenance | sbom
    ok: bool
    detail: str


class VerificationOut(BaseModel):
    digest: str
    ok: bool  # every check passed
    checks: list[CheckOut]


async def _stored(ctx: ServerContext, caller: Principal, digest: str) -> str:
    digest = parse_digest(digest)
    if await ctx.registry.size(digest) is None or not await ctx.records.has_artifact(
        caller.tenant_id, digest
    ):
        raise NotFoundError(f"artifact {digest} not found; upload it first")
    return digest


@router.put("/artifacts/{digest}/provenance")
async def put_provenance(
    digest: str,
    request: Request,
    envelope: Annotated[dict[str, Any], Body()],
    caller: Operator,
    ctx: Ctx,
) -> ProvenanceUploadOut:
    """Attach the build's signed provenance (a DSSE envelope) to a stored artifact.

    Refused (nothing stored) when it is malformed, of an unknown type, or a
    statement about another artifact; stored unverified when no key of
    ``X-Aether-App`` signed it."""
    digest = await _stored(ctx, caller, digest)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_ENVELOPE_BYTES:
        raise ProvenanceInvalidError(f"a provenance envelope is at most {MAX_ENVELOPE_BYTES} bytes")
    app = request.headers.get(APP_HEADER) or None
    if app is not None:
        validate_app_name(app)
    verified = await record_provenance(ctx, caller.tenant_id, digest, envelope, app)
    return ProvenanceUploadOut(
        digest=digest, verified=verified.signed_by is not None, signed_by=verified.signed_by
    )


@router.get("/artifacts/{digest}/provenance")
async def get_provenance(digest: str, caller: Caller, ctx: Ctx) -> ProvenanceOut:
    """The provenance statement stored with the artifact, as uploaded and decoded."""
    row = await ctx.records.artifact_row(caller.tenant_id, parse_digest(digest))
    if row.provenance is None:
        raise NotFoundError(f"artifact {row.digest} has no provenance statement")
    payload = base64.b64decode(str(row.provenance.get("payload", "")))
    statement = json.loads(payload)
    return ProvenanceOut(
        digest=row.digest,
        envelope=row.provenance,
        statement=statement if isinstance(statement, dict) else {},
        signed_by=row.provenance_by,
    )


@router.get("/artifacts/{digest}/verification")
async def get_verification(digest: str, caller: Caller, ctx: Ctx) -> VerificationOut:
    """Recompute the stored archive's digest; check its signature, provenance and SBOM
    against every key registered for the tenant's apps. Always 200: see ``ok``."""
    digest = parse_digest(digest)
    checks = await verify_artifact(ctx, caller.tenant_id, digest)
    return VerificationOut(
        digest=digest,
        ok=all(c.ok for c in checks),
        checks=[CheckOut(name=c.name, ok=c.ok, detail=c.detail) for c in checks],
    )

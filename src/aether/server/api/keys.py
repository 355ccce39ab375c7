"""Signing API: an app's public keys, its settings, and signatures on stored artifacts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from aether.artifacts import parse_digest
from aether.artifacts.signing import KeyFormatError, fingerprint, parse_public_key, public_key_b64
from aether.errors import BadRequestError, NotFoundError
from aether.model.app import validate_app_name
from aether.model.keys import AppSettingsIn, AppSettingsOut, PublicKeyIn, PublicKeyOut
from aether.server.api.artifacts import UploadOut
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Caller, Operator
from aether.server.services.signatures import (
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
    if values.get("require_signature", False) is None:
        del values["require_signature"]  # null means "leave as it is"; the column is NOT NULL
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

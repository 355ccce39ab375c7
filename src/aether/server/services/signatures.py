"""Artifact signature checks: at upload (``verified``) and at deployment (``require_signature``).

A signature is Ed25519 over the artifact digest's UTF-8 bytes, base64 in
``X-Aether-Signature``; ``X-Aether-App`` names the app whose registered keys are
tried. Keys belong to one app of one tenant, so another tenant's keys never
verify anything of this tenant's.

An upload's signature is stored whether or not it verifies (``signed_by`` is the
fingerprint that verified it, else null). A deployment of an app with
``require_signature`` re-verifies the stored signature against the app's keys
*now*: keys may have been added or deleted since the upload.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.requests import Request

from aether.artifacts.signing import KeyFormatError, decode_signature, verify_digest
from aether.errors import SignatureInvalidError, SignatureRequiredError
from aether.model.app import validate_app_name
from aether.server.context import ServerContext
from aether.store.records.schema import PublicKey

__all__ = [
    "APP_HEADER",
    "SIGNATURE_HEADER",
    "SignedUpload",
    "check_deployable",
    "matching_key",
    "read_signature_headers",
    "record_signature",
]

SIGNATURE_HEADER = "X-Aether-Signature"
APP_HEADER = "X-Aether-App"


@dataclass(frozen=True, slots=True)
class SignedUpload:
    """What an upload claims: the signature bytes (base64 as sent) and for which app."""

    signature: str
    raw: bytes
    app: str | None


def read_signature_headers(request: Request) -> SignedUpload | None:
    """The upload's signature headers, checked before any byte is stored.

    None without ``X-Aether-Signature``; ``signature_invalid`` (400) when it is not
    base64 of 64 bytes; ``bad_request`` when ``X-Aether-App`` is not an app name.
    """
    value = request.headers.get(SIGNATURE_HEADER)
    app = request.headers.get(APP_HEADER) or None
    if app is not None:
        validate_app_name(app)
    if value is None:
        return None
    try:
        raw = decode_signature(value)
    except KeyFormatError as exc:
        raise SignatureInvalidError(
            f"{SIGNATURE_HEADER} is not an Ed25519 signature: {exc}"
        ) from None
    return SignedUpload(signature=value.strip(), raw=raw, app=app)


def matching_key(keys: Sequence[PublicKey], digest: str, raw: bytes) -> PublicKey | None:
    """The first key whose signature over ``digest`` is ``raw``, if any."""
    for key in keys:
        try:
            if verify_digest(key.public_key, digest, raw):
                return key
        except KeyFormatError:  # a stored key is validated on the way in; never trust it blindly
            continue
    return None


async def _app_keys(ctx: ServerContext, tenant_id: str, app_name: str) -> Sequence[PublicKey]:
    app = await ctx.records.find_app(tenant_id, app_name)
    if app is None:
        return []
    return await ctx.records.list_public_keys(tenant_id, app)


async def record_signature(
    ctx: ServerContext, tenant_id: str, digest: str, signed: SignedUpload | None
) -> bool:
    """Store the upload's signature on the artifact row; True iff it verified."""
    if signed is None:
        return False
    keys = await _app_keys(ctx, tenant_id, signed.app) if signed.app else []
    key = matching_key(keys, digest, signed.raw)
    await ctx.records.set_artifact_signature(
        tenant_id, digest, signed.signature, key.fingerprint if key else None
    )
    return key is not None


async def check_deployable(ctx: ServerContext, tenant_id: str, app_name: str, digest: str) -> None:
    """Refuse ``digest`` for ``app_name`` if the app requires a signature it lacks."""
    app = await ctx.records.find_app(tenant_id, app_name)
    if app is None or not app.require_signature:
        return
    artifact = await ctx.records.get_artifact(tenant_id, digest)
    if artifact is None or not artifact.signature:
        raise SignatureRequiredError(
            f"app {app_name!r} requires signed artifacts and {digest} has no signature: "
            f"deploy with a signing key (`aether keys generate`, or {SIGNATURE_HEADER} "
            f"on upload)"
        )
    try:
        raw = decode_signature(artifact.signature)
    except KeyFormatError:
        raw = b""
    keys = await ctx.records.list_public_keys(tenant_id, app)
    if not raw or matching_key(keys, digest, raw) is None:
        raise SignatureInvalidError(
            f"the signature of {digest} verifies against none of the "
            f"{len(keys)} key(s) registered for app {app_name!r}; register the signer's "
            f"key with `aether keys register {app_name}`"
        )

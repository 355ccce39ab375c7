"""Provenance statements: checked on arrival, required at deployment, verified on demand.

On arrival (``record_provenance``) a statement that is malformed, of an unknown
type or for another artifact is refused and nothing is stored; one whose
signature verifies against none of the app's keys is stored unverified (a key
may be registered later), exactly as an artifact signature is. A deployment of
an app with ``require_provenance`` re-verifies the stored statement against the
app's keys *now* (``check_provenance``).

``verify_artifact`` is ``aether artifacts verify``: it recomputes the stored
archive's digest and checks the signature, the provenance and the SBOM against
every key registered for any app of the tenant.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aether.artifacts.provenance import (
    ProvenanceInvalidError,
    ProvenanceMismatchError,
    ProvenanceRequiredError,
    TrustedKey,
    Verified,
    sbom_digest,
    verify_envelope,
)
from aether.artifacts.signing import KeyFormatError, decode_signature
from aether.server.context import ServerContext
from aether.server.services.signatures import check_deployable, matching_key
from aether.store.records.schema import App, Artifact, PublicKey

__all__ = [
    "Check",
    "check_provenance",
    "check_supply_chain",
    "record_provenance",
    "verify_artifact",
]


@dataclass(frozen=True, slots=True)
class Check:
    name: str  # digest | signature | provenance | sbom
    ok: bool
    detail: str


def _trusted(keys: Sequence[PublicKey]) -> list[TrustedKey]:
    return [TrustedKey(fingerprint=k.fingerprint, public_key=k.public_key) for k in keys]


async def _keys_of(ctx: ServerContext, tenant_id: str, app_name: str | None) -> list[TrustedKey]:
    if not app_name:
        return []
    app = await ctx.records.find_app(tenant_id, app_name)
    if app is None:
        return []
    return _trusted(await ctx.records.list_public_keys(tenant_id, app))


async def record_provenance(
    ctx: ServerContext, tenant_id: str, digest: str, envelope: dict[str, Any], app: str | None
) -> Verified:
    """Check ``envelope`` is provenance of ``digest`` and store it; who verified it."""
    verified = verify_envelope(envelope, digest, await _keys_of(ctx, tenant_id, app))
    await ctx.records.set_artifact_provenance(tenant_id, digest, envelope, verified.signed_by)
    return verified


async def check_provenance(ctx: ServerContext, tenant_id: str, app: App, digest: str) -> None:
    """Refuse ``digest`` for ``app`` (which requires provenance) unless its statement
    verifies against one of the app's keys."""
    artifact = await ctx.records.get_artifact(tenant_id, digest)
    if artifact is None or artifact.provenance is None:
        raise ProvenanceRequiredError(
            f"app {app.name!r} requires build provenance and {digest} has none: deploy "
            f"with a signing key (`aether keys generate`), which signs the artifact and "
            f"its provenance statement"
        )
    keys = _trusted(await ctx.records.list_public_keys(tenant_id, app))
    verified = verify_envelope(artifact.provenance, digest, keys)
    if verified.signed_by is None:
        raise ProvenanceInvalidError(
            f"the provenance statement of {digest} verifies against none of the "
            f"{len(keys)} key(s) registered for app {app.name!r}; register the signer's "
            f"key with `aether keys register {app.name}`"
        )


async def check_supply_chain(
    ctx: ServerContext, tenant_id: str, app_name: str, digest: str
) -> None:
    """What a deployment of ``digest`` to ``app_name`` must pass: ``require_signature``
    (``check_deployable``), then ``require_provenance``."""
    await check_deployable(ctx, tenant_id, app_name, digest)
    app = await ctx.records.find_app(tenant_id, app_name)
    if app is not None and app.require_provenance:
        await check_provenance(ctx, tenant_id, app, digest)


async def _digest_check(ctx: ServerContext, digest: str) -> Check:
    hasher = hashlib.sha256()
    size = 0
    async for chunk in await ctx.registry.open_chunks(digest):
        hasher.update(chunk)
        size += len(chunk)
    actual = "sha256:" + hasher.hexdigest()
    if actual != digest:
        return Check("digest", False, f"the stored archive's sha256 is {actual}, not {digest}")
    return Check("digest", True, f"the stored archive ({size} bytes) hashes to {digest}")


def _signature_check(row: Artifact, keys: Sequence[PublicKey]) -> Check:
    if not row.signature:
        return Check("signature", False, "the artifact was uploaded unsigned")
    try:
        raw = decode_signature(row.signature)
    except KeyFormatError as exc:
        return Check("signature", False, f"the stored signature is malformed: {exc}")
    key = matching_key(keys, row.digest, raw)
    if key is None:
        return Check(
            "signature",
            False,
            f"the signature verifies against none of the tenant's {len(keys)} registered key(s)",
        )
    return Check("signature", True, f"signed by {key.name} ({key.fingerprint})")


def _provenance_check(row: Artifact, keys: Sequence[PublicKey]) -> tuple[Check, Verified | None]:
    if row.provenance is None:
        return Check("provenance", False, "no provenance statement was uploaded"), None
    try:
        verified = verify_envelope(row.provenance, row.digest, _trusted(keys))
    except (ProvenanceInvalidError, ProvenanceMismatchError) as exc:
        return Check("provenance", False, exc.message), None
    if verified.signed_by is None:
        return (
            Check(
                "provenance",
                False,
                "the statement's signature verifies against none of the tenant's "
                f"{len(keys)} registered key(s)",
            ),
            None,  # an untrusted statement vouches for nothing, the SBOM included
        )
    return (
        Check("provenance", True, f"statement for {row.digest} signed by {verified.signed_by}"),
        verified,
    )


def _sbom_check(row: Artifact, verified: Verified | None) -> Check:
    stored = sbom_digest(row.sbom) if row.sbom is not None else None
    if verified is None:
        if stored is None:
            return Check("sbom", False, "no SBOM, and no provenance statement to vouch for none")
        return Check("sbom", False, f"SBOM {stored} is not vouched for by a valid statement")
    recorded = verified.sbom_digest
    if recorded is None and stored is None:
        return Check("sbom", True, "built without an SBOM, as the statement records")
    if recorded is None:
        return Check("sbom", False, f"the stored SBOM {stored} is not in the statement")
    if stored is None:
        return Check("sbom", False, f"the statement records SBOM {recorded}; none is stored")
    if recorded != stored:
        return Check(
            "sbom", False, f"the stored SBOM is {stored}; the statement records {recorded}"
        )
    components = row.sbom.get("components") if row.sbom is not None else None
    count = len(components) if isinstance(components, list) else 0
    return Check("sbom", True, f"{stored} ({count} components) as the statement records")


async def verify_artifact(ctx: ServerContext, tenant_id: str, digest: str) -> list[Check]:
    """Every check of ``aether artifacts verify``, in order (the row must exist)."""
    row = await ctx.records.artifact_row(tenant_id, digest)
    keys = await ctx.records.list_tenant_public_keys(tenant_id)
    checks = [await _digest_check(ctx, row.digest), _signature_check(row, keys)]
    provenance, verified = _provenance_check(row, keys)
    return [*checks, provenance, _sbom_check(row, verified)]

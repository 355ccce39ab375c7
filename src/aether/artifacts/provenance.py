"""Build provenance: an in-toto Statement v1 with a SLSA v1 predicate, in a signed DSSE envelope.

Pure: the caller gathers the facts (``SourceFacts``: source tree digest,
lockfile digests, git commit; ``aether.artifacts.source_facts`` reads them) and
passes the time stamps and the key; nothing here touches the file system, the
clock or the network.

- the **statement** names the artifact as its only subject
  (``{"name": app, "digest": {"sha256": hex}}``); its predicate's
  ``buildDefinition`` holds the build command, app and runtime
  (``externalParameters``) and the lockfiles, the source tree and the git
  commit (``resolvedDependencies``); ``runDetails`` holds the builder
  (``aether-cli/<version>``), the start and end times and, as a byproduct, the
  digest of the SBOM sent with the artifact;
- the **envelope** is DSSE: ``payload`` is base64 of the statement's JSON,
  ``payloadType`` ``application/vnd.in-toto+json``, and each signature is Ed25519
  (the artifact's signing key) over the DSSE pre-authentication encoding
  ``"DSSEv1" SP len(type) SP type SP len(payload) SP payload``; ``keyid`` is the
  key's fingerprint (a hint only: verification tries every trusted key).

``verify_envelope`` checks, in this order, the envelope's shape, the statement
type, the predicate type, that the subject is the artifact (a statement for
another digest is refused naming both), and the signature against the trusted
keys. Failures raise ``ProvenanceInvalidError`` (or ``ProvenanceMismatchError``
for the subject); an untrusted signature is not an error there but a
``Verified`` with ``signed_by=None``, so the caller chooses (store it until a
key is registered, or refuse a deployment).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature

from aether.artifacts.signing import (
    Ed25519PrivateKey,
    KeyFormatError,
    fingerprint,
    parse_public_key,
)
from aether.errors import BadRequestError

__all__ = [
    "BUILD_TYPE",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "BuildFacts",
    "ProvenanceInvalidError",
    "ProvenanceMismatchError",
    "ProvenanceRequiredError",
    "SourceFacts",
    "TrustedKey",
    "Verified",
    "make_statement",
    "pae",
    "recorded_sbom_digest",
    "sbom_digest",
    "sign_statement",
    "verify_envelope",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = "https://aether.dev/provenance/build/v1"
SBOM_NAME = "sbom.cdx.json"
SBOM_MEDIA_TYPE = "application/vnd.cyclonedx+json"
#: An envelope bigger than this is refused before it is decoded.
MAX_ENVELOPE_BYTES = 1 << 20


class ProvenanceInvalidError(BadRequestError):
    """A provenance envelope or statement that is malformed, of an unknown type, or
    signed by none of the trusted keys."""

    code = "provenance_invalid"


class ProvenanceMismatchError(BadRequestError):
    """A provenance statement whose subject is another artifact."""

    code = "provenance_mismatch"


class ProvenanceRequiredError(BadRequestError):
    """The app requires provenance and the artifact has no valid statement."""

    code = "provenance_required"


@dataclass(frozen=True, slots=True)
class SourceFacts:
    """What the build read: its source tree, lockfiles and (if any) git checkout."""

    tree_digest: str  # sha256:… over the sorted (path, mode, sha256) of the source files
    lockfiles: tuple[tuple[str, str], ...] = ()  # (path relative to the source, sha256 hex)
    git_commit: str | None = None
    git_remote: str | None = None
    git_dirty: bool | None = None  # None: not a git repository


@dataclass(frozen=True, slots=True)
class BuildFacts:
    """How the build ran."""

    app: str
    runtime: str
    command: tuple[str, ...]
    builder_version: str
    started_on: datetime
    finished_on: datetime
    sbom_digest: str | None = None  # sbom_digest() of the SBOM sent with the artifact


@dataclass(frozen=True, slots=True)
class TrustedKey:
    fingerprint: str
    public_key: str  # base64 of the 32 raw bytes


@dataclass(frozen=True, slots=True)
class Verified:
    statement: dict[str, Any]
    signed_by: str | None  # the fingerprint of the trusted key that signed it, if one did
    sbom_digest: str | None = field(default=None)


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: equal documents give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sbom_digest(sbom: Mapping[str, Any]) -> str:
    """``sha256:`` of the SBOM's canonical JSON (independent of key order and spacing)."""
    return "sha256:" + hashlib.sha256(canonical_json(sbom)).hexdigest()


def make_statement(digest: str, source: SourceFacts, build: BuildFacts) -> dict[str, Any]:
    """The in-toto Statement v1 (SLSA provenance v1 predicate) of artifact ``digest``."""
    dependencies: list[dict[str, Any]] = [
        {"name": "source", "digest": {"sha256": _hex(source.tree_digest)}}
    ]
    if source.git_commit is not None:
        git: dict[str, Any] = {
            "name": "git",
            "digest": {"gitCommit": source.git_commit},
            "annotations": {"dirty": bool(source.git_dirty)},
        }
        if source.git_remote:
            git["uri"] = f"git+{source.git_remote}"
        dependencies.append(git)
    dependencies += [
        {"name": path, "digest": {"sha256": sha}} for path, sha in sorted(source.lockfiles)
    ]
    run_details: dict[str, Any] = {
        "builder": {"id": f"aether-cli/{build.builder_version}"},
        "metadata": {
            "startedOn": _time(build.started_on),
            "finishedOn": _time(build.finished_on),
        },
    }
    if build.sbom_digest is not None:
        run_details["byproducts"] = [
            {
                "name": SBOM_NAME,
                "digest": {"sha256": _hex(build.sbom_digest)},
                "mediaType": SBOM_MEDIA_TYPE,
            }
        ]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": build.app, "digest": {"sha256": _hex(digest)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "command": list(build.command),
                    "app": build.app,
                    "runtime": build.runtime,
                },
                "internalParameters": {"gitDirty": source.git_dirty},
                "resolvedDependencies": dependencies,
            },
            "runDetails": run_details,
        },
    }


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what a signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def sign_statement(statement: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The DSSE envelope of ``statement`` signed with ``key``."""
    payload = canonical_json(statement)
    signature = key.sign(pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [
            {"keyid": fingerprint(key), "sig": base64.b64encode(signature).decode("ascii")}
        ],
    }


def _b64decode(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ProvenanceInvalidError(f"the envelope's {what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProvenanceInvalidError(f"the envelope's {what} is not valid base64") from None


def _open(envelope: Mapping[str, Any]) -> tuple[bytes, dict[str, Any], list[bytes]]:
    """The payload bytes, the statement and the raw signatures of a well-formed envelope."""
    if not isinstance(envelope, Mapping):
        raise ProvenanceInvalidError("the provenance is not a DSSE envelope (a JSON object)")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise ProvenanceInvalidError(
            f"the envelope's payloadType is {envelope.get('payloadType')!r}, not {PAYLOAD_TYPE!r}"
        )
    payload = _b64decode(envelope.get("payload"), "payload")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise ProvenanceInvalidError("the envelope has no signatures")
    raws: list[bytes] = []
    for entry in signatures:
        if not isinstance(entry, Mapping):
            raise ProvenanceInvalidError("an envelope signature is not an object")
        raws.append(_b64decode(entry.get("sig"), "signature"))
    try:
        statement = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise ProvenanceInvalidError("the envelope's payload is not JSON") from None
    if not isinstance(statement, dict):
        raise ProvenanceInvalidError("the envelope's payload is not a JSON object")
    return payload, statement, raws


def _subject_digests(statement: Mapping[str, Any]) -> list[str]:
    subject = statement.get("subject")
    if not isinstance(subject, list) or not subject:
        raise ProvenanceInvalidError("the statement has no subject")
    found: list[str] = []
    for entry in subject:
        digest = entry.get("digest") if isinstance(entry, Mapping) else None
        sha = digest.get("sha256") if isinstance(digest, Mapping) else None
        if not isinstance(sha, str):
            raise ProvenanceInvalidError("a subject of the statement has no sha256 digest")
        found.append("sha256:" + sha.lower())
    return found


def recorded_sbom_digest(statement: Mapping[str, Any]) -> str | None:
    """The SBOM digest the statement records as a byproduct, if it records one."""
    predicate = statement.get("predicate")
    details = predicate.get("runDetails") if isinstance(predicate, Mapping) else None
    byproducts = details.get("byproducts") if isinstance(details, Mapping) else None
    if not isinstance(byproducts, list):
        return None
    for entry in byproducts:
        if isinstance(entry, Mapping) and entry.get("name") == SBOM_NAME:
            digest = entry.get("digest")
            sha = digest.get("sha256") if isinstance(digest, Mapping) else None
            if isinstance(sha, str):
                return "sha256:" + sha.lower()
    return None


def _signer(payload: bytes, raws: Sequence[bytes], keys: Sequence[TrustedKey]) -> str | None:
    signed = pae(PAYLOAD_TYPE, payload)
    for key in keys:
        try:
            public = parse_public_key(key.public_key)
        except KeyFormatError:
            continue
        for raw in raws:
            try:
                public.verify(raw, signed)
            except InvalidSignature:  # also what a signature of the wrong length raises
                continue
            return key.fingerprint
    return None


def verify_envelope(
    envelope: Mapping[str, Any], digest: str, keys: Sequence[TrustedKey]
) -> Verified:
    """Check ``envelope`` is provenance of artifact ``digest``; who of ``keys`` signed it.

    Raises ``ProvenanceInvalidError`` for a malformed envelope or an unknown
    statement or predicate type, ``ProvenanceMismatchError`` when the subject is
    another artifact. ``signed_by`` is None when no trusted key signed it.
    """
    payload, statement, raws = _open(envelope)
    if statement.get("_type") != STATEMENT_TYPE:
        raise ProvenanceInvalidError(
            f"the statement's _type is {statement.get('_type')!r}, not {STATEMENT_TYPE!r}"
        )
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise ProvenanceInvalidError(
            f"unknown predicateType {statement.get('predicateType')!r}; "
            f"Aether reads {PREDICATE_TYPE!r}"
        )
    subjects = _subject_digests(statement)
    if digest not in subjects:
        raise ProvenanceMismatchError(
            f"the provenance statement is for {', '.join(subjects)}, not for the artifact "
            f"{digest}: a statement describes one artifact and is refused for any other"
        )
    return Verified(
        statement=statement,
        signed_by=_signer(payload, raws, keys),
        sbom_digest=recorded_sbom_digest(statement),
    )

"""The cluster's certificate authorities as the state store keeps them, and the API's
views of them (``trust/authorities``; ``server.services.trust``).

During a CA rotation two authorities are trusted: the new one issues node
certificates at once; the old one still signs the servers' certificates until its
``retire_at`` (the overlap), by when every node has renewed from the new one and
trusts it. Which authority does what is a function of the record and the time.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from aether.model.versioned import Versioned

__all__ = [
    "AuthorityOut",
    "AuthorityRecord",
    "CaOut",
    "CertificateIn",
    "CertificateOut",
    "ClusterTrustOut",
    "RotateIn",
    "TrustRecord",
    "issuing",
    "serving",
    "trusted",
]


class AuthorityRecord(BaseModel):
    cert: str  # PEM
    key: str  # the private key's PEM, sealed with the secrets key (never in the clear)
    created_at: float
    retire_at: float | None = None  # no longer trusted from then on (after a rotation)


class TrustRecord(Versioned):
    SCHEMA_NAME: ClassVar[str] = "trust"

    cluster: str
    authorities: list[AuthorityRecord]  # oldest first


def trusted(record: TrustRecord, now: float) -> list[AuthorityRecord]:
    """The authorities trusted at ``now`` (oldest first)."""
    return [a for a in record.authorities if a.retire_at is None or a.retire_at > now]


def issuing(record: TrustRecord, now: float) -> AuthorityRecord:
    """The authority that signs node certificates: the newest trusted one."""
    return trusted(record, now)[-1]


def serving(record: TrustRecord, now: float) -> AuthorityRecord:
    """The authority that signs servers' certificates: the oldest trusted one (every node
    trusts it, including those that have not renewed since a rotation began)."""
    return trusted(record, now)[0]


class AuthorityOut(BaseModel):
    fingerprint: str
    subject: str
    not_after: float
    created_at: float
    retire_at: float | None
    issuing: bool  # signs node certificates now
    serving: bool  # signs the servers' certificates now


class CaOut(BaseModel):
    cluster: str
    authorities: list[AuthorityOut]


class RotateIn(BaseModel):
    #: how long the old CA stays trusted: every node renews from the new one meanwhile
    overlap_seconds: float = Field(default=3600.0, ge=0, le=30 * 86400)


class ClusterTrustOut(BaseModel):
    """Public: what a node or the CLI needs to trust this cluster's servers."""

    cluster: str
    authorities: list[str]  # PEM, trusted now
    fingerprints: list[str]
    node_urls: list[str]  # where nodes call (mutual TLS), every live server


class CertificateIn(Versioned):
    SCHEMA_NAME: ClassVar[str] = "certificate"

    csr: str = Field(max_length=16384)  # PEM; only its public key is used


class CertificateOut(Versioned):
    SCHEMA_NAME: ClassVar[str] = "certificate_reply"

    certificate: str  # PEM, ``spiffe://{cluster}/node/{id}``
    authorities: list[str]  # PEM, to trust from now on
    not_after: float
    renew_at: float

"""Certificates of the cluster: its CA, node and server identities (SPIFFE IDs).

A workload's identity is the URI SAN of its certificate:
``spiffe://{cluster}/node/{node-id}`` for a node, ``spiffe://{cluster}/server/{name}``
for a server. The CA signs a node's certificate from its certificate signing
request (CSR): only the CSR's public key is used; the subject and names are the
CA's choice, so a node cannot ask for another identity.

Keys are ECDSA P-256 (every TLS stack speaks it). Everything here is a function
of its arguments (the time is passed in), so tests issue expired or
not-yet-valid certificates by passing another time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_KEY_USAGE",
    "Authority",
    "CertificateError",
    "Identity",
    "cert_pem",
    "fingerprint",
    "host_names",
    "identity_of",
    "issue",
    "key_pem",
    "load_certificate",
    "new_authority",
    "new_key",
    "new_request",
    "renew_at",
    "signed_by",
    "spiffe_id",
    "write_authority_files",
]

SPIFFE = "spiffe://"

#: what a CA's key is for: signing certificates (and revocation lists)
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


class CertificateError(ValueError):
    """Malformed or unacceptable certificate material (callers turn it into a 400)."""


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate and private key, as PEM."""

    cert_pem: str
    key_pem: str

    @property
    def cert(self) -> x509.Certificate:
        return load_certificate(self.cert_pem)


@dataclass(frozen=True)
class Identity:
    """Who a certificate names: ``kind`` ``node`` or ``server``, its ``name``, its cluster."""

    cluster: str
    kind: str
    name: str


def spiffe_id(cluster: str, kind: str, name: str) -> str:
    return f"{SPIFFE}{cluster}/{kind}/{name}"


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _load_key(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the CA key is not an ECDSA key")
    return key


def load_certificate(pem: str | bytes) -> x509.Certificate:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"not a certificate: {exc}") from None


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def fingerprint(pem: str) -> str:
    """``sha256:`` and the hex digest of the certificate's DER bytes."""
    der = load_certificate(pem).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def new_authority(cluster: str, now: dt.datetime, days: int = 3650) -> Authority:
    """A self-signed CA for ``cluster`` (a path length of 0: it signs leaves only)."""
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aether"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"aether cluster CA {cluster} {now:%Y%m%d%H%M%S}"
            ),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert_pem(cert), key_pem(key))


def new_request(key: ec.EllipticCurvePrivateKey, common_name: str) -> str:
    """A CSR for ``key`` (the CA takes only its public key)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _request_key(csr_pem: str) -> ec.EllipticCurvePublicKey:
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise CertificateError(f"not a certificate signing request (PEM): {exc}") from None
    if not csr.is_signature_valid:
        raise CertificateError("the certificate signing request's signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CertificateError("the certificate signing request must carry an ECDSA P-256 key")
    return key


def host_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """Subject alternative names for host names and IP addresses."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _san(uri: str | None, hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    uris: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)] if uri else []
    return x509.SubjectAlternativeName(uris + host_names(hosts))


def issue(
    authority: Authority,
    *,
    csr_pem: str | None = None,
    public_key: ec.EllipticCurvePublicKey | None = None,
    uri: str | None,
    hosts: Sequence[str] = (),
    now: dt.datetime,
    lifetime: dt.timedelta,
    backdate: dt.timedelta = dt.timedelta(0),
) -> str:
    """A leaf certificate for ``uri`` (a SPIFFE ID; None: names only) and ``hosts`` (DNS
    names or IP addresses, for a server), valid from ``now - backdate`` for
    ``lifetime``, usable as TLS client and server. The key is the CSR's (checked) or
    ``public_key``."""
    if csr_pem is not None:
        key = _request_key(csr_pem)
    elif public_key is not None:
        key = public_key
    else:
        raise CertificateError("a certificate needs a CSR or a public key")
    ca_cert = authority.cert
    ca_key = _load_key(authority.key_pem)
    not_after = min(now + lifetime, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (uri or hosts[0])[-64:])]))
        .issuer_name(ca_cert.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(uri, hosts), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert_pem(cert)


def identity_of(cert: x509.Certificate) -> Identity | None:
    """The SPIFFE identity a certificate names (its one ``spiffe://`` URI SAN), or None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [
        u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(SPIFFE)
    ]
    if len(uris) != 1:
        return None
    cluster, _, rest = uris[0][len(SPIFFE) :].partition("/")
    kind, _, name = rest.partition("/")
    if not cluster or kind not in ("node", "server") or not name or "/" in name:
        return None
    return Identity(cluster, kind, name)


def signed_by(cert: x509.Certificate, authority_pem: str) -> bool:
    """Whether ``cert`` was signed by the CA in ``authority_pem``."""
    ca = load_certificate(authority_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def renew_at(cert: x509.Certificate) -> dt.datetime:
    """When to renew: two-thirds through the certificate's lifetime."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * 2 / 3


def write_authority_files(
    directory: str, cluster: str, hosts: Sequence[str], now: dt.datetime
) -> dict[str, str]:
    """A CA and a server certificate for ``hosts`` from it, as files in ``directory``
    (keys 0600): ``ca.crt``, ``ca.key``, ``api.crt``, ``api.key``. For `aether up
    --tls`: the server takes the CA as the cluster's and serves the API with the
    certificate; the CLI trusts the CA."""
    authority = new_authority(cluster, now)
    key = new_key()
    api = issue(
        authority,
        public_key=key.public_key(),
        uri=spiffe_id(cluster, "server", "api"),
        hosts=hosts,
        now=now,
        lifetime=dt.timedelta(days=365),
        backdate=dt.timedelta(minutes=5),
    )
    paths = {
        name: os.path.join(directory, name) for name in ("ca.crt", "ca.key", "api.crt", "api.key")
    }
    for name, text, mode in (
        ("ca.crt", authority.cert_pem, 0o644),
        ("ca.key", authority.key_pem, 0o600),
        ("api.crt", api, 0o644),
        ("api.key", key_pem(key), 0o600),
    ):
        fd = os.open(paths[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
    return paths

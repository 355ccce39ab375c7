"""The cluster CA on a server: node certificates, its own certificate, the node port's
TLS, and CA rotation.

The authorities live in the state store (``trust/authorities``, ``model.trust``), their
private keys sealed with the secrets key, so every server (which has the same secrets
key) signs with them and none keeps a copy of its own. The first server to start
creates the CA (or takes ``AETHER_CA_CERT_FILE``/``AETHER_CA_KEY_FILE``); the others
read it. Each server makes its own key at start and signs its own certificate
(``spiffe://{cluster}/server/{host}:{port}``), renewed two-thirds through its life.

Every server reads the record again each ``POLL_SECONDS``: a rotation made through one
server reaches the others' TLS within a second.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from cryptography import x509

from aether.model.trust import (
    AuthorityOut,
    AuthorityRecord,
    CaOut,
    CertificateOut,
    TrustRecord,
    issuing,
    serving,
    trusted,
)
from aether.server.services.secretbox import SecretBox
from aether.server.settings import ServerSettings
from aether.store.base import Compare, Put, StateStore
from aether.trust import ca, tls

__all__ = ["KEY", "POLL_SECONDS", "ServerTrust", "follow_trust", "server_name"]

KEY = "trust/authorities"
POLL_SECONDS = 1.0

log = logging.getLogger("aether.server")


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _ski(cert: x509.Certificate) -> bytes:
    return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def _aki(cert: x509.Certificate) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    return ext.key_identifier


def server_hosts(settings: ServerSettings) -> list[str]:
    """The names a server's certificate carries: its URLs' hosts, this machine, loopback."""
    hosts = [urlsplit(settings.api_url()).hostname or "", settings.host, *settings.tls_san]
    hosts += ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    seen: list[str] = []
    for host in hosts:
        if host and host not in ("0.0.0.0", "::") and host not in seen:
            seen.append(host)
    return seen


class ServerTrust:
    """This server's view of the cluster CA, kept current by ``follow_trust``."""

    def __init__(
        self, settings: ServerSettings, secrets: SecretBox, store: StateStore, name: str
    ) -> None:
        self.settings = settings
        self.secrets = secrets
        self.store = store
        self.name = name  # the server's identity: spiffe://{cluster}/server/{name}
        self.record: TrustRecord | None = None
        self.revision = 0
        self._key = ca.new_key()
        self._key_pem = ca.key_pem(self._key)
        self._cert = ""
        self._renew_at = 0.0
        self._server_context: ssl.SSLContext | None = None
        self._client_context: ssl.SSLContext | None = None
        self._trusted_keys: frozenset[bytes] = frozenset()
        self._fingerprints: list[str] = []
        self._skis: dict[str, bytes] = {}  # a CA certificate's key identifier, by its PEM
        self._identities: dict[str, tuple[ca.Identity, bytes | None, float]] = {}
        self.node_urls: list[str] = []  # set by the server once its node port listens

    @property
    def cluster(self) -> str:
        return self.record.cluster if self.record is not None else self.settings.cluster_name

    # -- the record ---------------------------------------------------------------------

    def _new_authority(self, now: float) -> AuthorityRecord:
        given = self.settings.ca_cert_file
        if given and self.record is None:
            with open(given) as fh:
                cert_pem = fh.read()
            with open(self.settings.ca_key_file) as fh:
                key_pem = fh.read()
            ca.load_certificate(cert_pem)  # fails clearly on a bad file
        else:
            authority = ca.new_authority(self.settings.cluster_name, _utc(now))
            cert_pem, key_pem = authority.cert_pem, authority.key_pem
        return AuthorityRecord(cert=cert_pem, key=self.secrets.seal(key_pem), created_at=now)

    async def start(self) -> None:
        """Read the CA, or create it when this is the cluster's first server."""
        kv = await self.store.get(KEY)
        if kv is None:
            record = TrustRecord(
                cluster=self.settings.cluster_name, authorities=[self._new_authority(time.time())]
            )
            result = await self.store.txn(
                [Compare(KEY, "create_revision", "==", 0)],
                [Put(KEY, record.model_dump_json().encode())],
            )
            if result.succeeded:
                log.info("created the cluster CA for %s", record.cluster)
            kv = await self.store.get(KEY)
            assert kv is not None
        self._take(TrustRecord.model_validate_json(kv.value), kv.mod_revision)

    async def refresh(self) -> None:
        kv = await self.store.get(KEY)
        if kv is not None and kv.mod_revision != self.revision:
            self._take(TrustRecord.model_validate_json(kv.value), kv.mod_revision)
        elif time.time() >= self._renew_at or self._retired_since_built():
            self._build()

    def _retired_since_built(self) -> bool:
        if self.record is None:
            return False
        keys = {self._ski(a.cert) for a in trusted(self.record, time.time())}
        return frozenset(keys) != self._trusted_keys

    def _take(self, record: TrustRecord, revision: int) -> None:
        if record.cluster != self.settings.cluster_name:
            log.warning(
                "the cluster's CA is for %r, not AETHER_CLUSTER_NAME %r: using %r",
                record.cluster,
                self.settings.cluster_name,
                record.cluster,
            )
        self.record, self.revision = record, revision
        self._build()

    def _authority(self, record: AuthorityRecord) -> ca.Authority:
        return ca.Authority(record.cert, self.secrets.unseal(record.key))

    def _build(self) -> None:
        """This server's certificate from the serving authority, and the TLS contexts."""
        assert self.record is not None
        now = time.time()
        lifetime = dt.timedelta(seconds=self.settings.node_cert_seconds)
        self._cert = ca.issue(
            self._authority(serving(self.record, now)),
            public_key=self._key.public_key(),
            uri=ca.spiffe_id(self.cluster, "server", self.name),
            hosts=server_hosts(self.settings),
            now=_utc(now),
            lifetime=lifetime,
            backdate=dt.timedelta(minutes=5),  # nodes whose clocks are a little behind
        )
        cert = ca.load_certificate(self._cert)
        self._renew_at = ca.renew_at(cert).timestamp()
        pems = self.authorities()
        self._trusted_keys = frozenset(self._ski(p) for p in pems)
        self._fingerprints = [ca.fingerprint(p) for p in pems]
        self._server_context = tls.server_context(self._cert, self._key_pem, pems)
        self._client_context = tls.client_context(pems, self._cert, self._key_pem)
        self._identities.clear()

    # -- what the rest of the server asks -----------------------------------------------

    def authorities(self) -> list[str]:
        assert self.record is not None
        return [a.cert for a in trusted(self.record, time.time())]

    def node_port_context(self) -> ssl.SSLContext:
        assert self._server_context is not None
        return self._server_context

    def client_context(self) -> ssl.SSLContext:
        """For this server's calls to another server's node port (mutual TLS)."""
        assert self._client_context is not None
        return self._client_context

    def identity(self, pem: str) -> ca.Identity | None:
        """Who a client certificate the TLS handshake verified names, while its CA is
        trusted and it is unexpired; None otherwise."""
        now = time.time()
        cached = self._identities.get(pem)
        if cached is None:
            try:
                cert = ca.load_certificate(pem)
            except ca.CertificateError:
                return None
            who = ca.identity_of(cert)
            if who is None or who.cluster != self.cluster:
                return None
            cached = (who, _aki(cert), cert.not_valid_after_utc.timestamp())
            if len(self._identities) > 10_000:
                self._identities.clear()
            self._identities[pem] = cached
        who, issuer, not_after = cached
        if now >= not_after or issuer not in self._trusted_keys:
            return None
        return who

    def issue_node(self, node: str, csr: str) -> CertificateOut:
        """A certificate for node ``node`` from its CSR (raises ``ca.CertificateError``)."""
        assert self.record is not None
        now = time.time()
        pem = ca.issue(
            self._authority(issuing(self.record, now)),
            csr_pem=csr,
            uri=ca.spiffe_id(self.cluster, "node", node),
            now=_utc(now),
            lifetime=dt.timedelta(seconds=self.settings.node_cert_seconds),
        )
        cert = ca.load_certificate(pem)
        return CertificateOut(
            certificate=pem,
            authorities=self.authorities(),
            not_after=cert.not_valid_after_utc.timestamp(),
            renew_at=ca.renew_at(cert).timestamp(),
        )

    def view(self) -> CaOut:
        assert self.record is not None
        now = time.time()
        issuer, server = issuing(self.record, now), serving(self.record, now)
        out = []
        for a in trusted(self.record, now):
            cert = ca.load_certificate(a.cert)
            out.append(
                AuthorityOut(
                    fingerprint=ca.fingerprint(a.cert),
                    subject=cert.subject.rfc4514_string(),
                    not_after=cert.not_valid_after_utc.timestamp(),
                    created_at=a.created_at,
                    retire_at=a.retire_at,
                    issuing=a is issuer,
                    serving=a is server,
                )
            )
        return CaOut(cluster=self.cluster, authorities=out)

    async def rotate(self, overlap: float) -> CaOut:
        """A new CA: it issues node certificates from now on; the ones trusted now stay
        trusted for ``overlap`` seconds (nodes renew from the new one meanwhile)."""
        for _ in range(5):
            kv = await self.store.get(KEY)
            assert kv is not None
            record = TrustRecord.model_validate_json(kv.value)
            now = time.time()
            kept = [
                a.model_copy(update={"retire_at": min(a.retire_at or now + overlap, now + overlap)})
                for a in trusted(record, now)
            ]
            updated = TrustRecord(
                cluster=record.cluster, authorities=[*kept, self._new_authority(now)]
            )
            result = await self.store.txn(
                [Compare(KEY, "mod_revision", "==", kv.mod_revision)],
                [Put(KEY, updated.model_dump_json().encode())],
            )
            if result.succeeded:
                await self.refresh()
                return self.view()
        raise RuntimeError("the CA record kept changing; try again")

    async def rewrap(self, rewrap: Callable[[str], str | None]) -> int:
        """Re-seal the CA keys with the secrets key's new key-encryption key (``aether
        secrets rotate-key``); how many changed."""
        for _ in range(5):
            kv = await self.store.get(KEY)
            if kv is None:
                return 0
            record = TrustRecord.model_validate_json(kv.value)
            changed = 0
            authorities = []
            for authority in record.authorities:
                sealed = rewrap(authority.key)
                if sealed is not None and sealed != authority.key:
                    changed += 1
                    authority = authority.model_copy(update={"key": sealed})
                authorities.append(authority)
            if not changed:
                return 0
            updated = TrustRecord(cluster=record.cluster, authorities=authorities)
            result = await self.store.txn(
                [Compare(KEY, "mod_revision", "==", kv.mod_revision)],
                [Put(KEY, updated.model_dump_json().encode())],
            )
            if result.succeeded:
                await self.refresh()
                return changed
        raise RuntimeError("the CA record kept changing; try again")

    def fingerprints(self) -> list[str]:
        """The trusted CAs' fingerprints (as of the last rebuild: within a second)."""
        return list(self._fingerprints)

    def _ski(self, pem: str) -> bytes:
        key = self._skis.get(pem)
        if key is None:
            key = self._skis[pem] = _ski(ca.load_certificate(pem))
        return key


async def follow_trust(trust: ServerTrust, on_error_log: bool = True) -> None:
    """Keep ``trust`` current (a rotation, a retired CA, this server's renewal)."""
    while True:
        await asyncio.sleep(POLL_SECONDS)
        try:
            await trust.refresh()
        except Exception as exc:
            if on_error_log:
                log.warning("reading the cluster CA failed (%s); trying again", exc)


def server_name(api_url: str) -> str:
    """A server's name in its SPIFFE ID: its API URL's ``host:port``."""
    parts = urlsplit(api_url)
    return parts.netloc or api_url

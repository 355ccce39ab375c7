"""A node's identity: its key, its certificate, the CAs it trusts, where it calls.

Kept in the node's data directory (0700), written atomically:

- ``node.key``: the private key (0600), made once and never sent anywhere;
- ``node.crt``: the certificate the cluster CA signed (``spiffe://{cluster}/node/{id}``);
- ``cluster-ca.pem``: the CAs the node trusts the servers by;
- ``servers.json``: the servers' node port URLs.

The certificate is short-lived: the node renews it two-thirds through its life (and
at once when the servers trust a CA it does not know: a rotation), by a CSR for the
same key over its current mutual TLS connection.
"""

from __future__ import annotations

import json
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aether.trust import ca, tls

__all__ = ["NodeIdentity"]

KEY_FILE = "node.key"
CERT_FILE = "node.crt"
CA_FILE = "cluster-ca.pem"
SERVERS_FILE = "servers.json"


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


@dataclass
class NodeIdentity:
    data_dir: Path
    node_id: str
    key_pem: str
    certificate: str = ""
    authorities: tuple[str, ...] = ()
    node_urls: tuple[str, ...] = ()
    context: ssl.SSLContext | None = None

    @classmethod
    def load(cls, data_dir: Path, node_id: str) -> NodeIdentity:
        """The stored identity (a new key when there is none yet)."""
        key_path = data_dir / KEY_FILE
        if key_path.exists():
            key_pem = key_path.read_text()
        else:
            key_pem = ca.key_pem(ca.new_key())
            _write(key_path, key_pem)
        identity = cls(data_dir, node_id, key_pem)
        try:
            identity.certificate = (data_dir / CERT_FILE).read_text()
            identity.authorities = tuple(_split_pems((data_dir / CA_FILE).read_text()))
            identity.node_urls = tuple(json.loads((data_dir / SERVERS_FILE).read_text()))
        except (OSError, ValueError):
            identity.certificate = ""
        if identity.certificate and identity.authorities and identity.node_urls:
            identity.context = tls.client_context(
                identity.authorities, identity.certificate, identity.key_pem
            )
        return identity

    @property
    def usable(self) -> bool:
        """A certificate that is still valid, CAs and URLs to call."""
        if self.context is None or not self.node_urls:
            return False
        cert = ca.load_certificate(self.certificate)
        return cert.not_valid_after_utc.timestamp() > time.time() + 5

    def request(self) -> str:
        key = serialization.load_pem_private_key(self.key_pem.encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return ca.new_request(key, self.node_id)

    def renew_at(self) -> float:
        return ca.renew_at(ca.load_certificate(self.certificate)).timestamp()

    def fingerprints(self) -> list[str]:
        return [ca.fingerprint(a) for a in self.authorities]

    def take(
        self, certificate: str, authorities: list[str], node_urls: list[str] | None = None
    ) -> ssl.SSLContext:
        """Store a new certificate (and CAs, URLs); the context to call with from now on."""
        context = tls.client_context(authorities, certificate, self.key_pem)
        _write(self.data_dir / CERT_FILE, certificate, 0o644)
        _write(self.data_dir / CA_FILE, "\n".join(a.strip() for a in authorities) + "\n", 0o644)
        if node_urls:
            _write(self.data_dir / SERVERS_FILE, json.dumps(node_urls), 0o644)
            self.node_urls = tuple(node_urls)
        self.certificate, self.authorities, self.context = certificate, tuple(authorities), context
        return context


def _split_pems(text: str) -> list[str]:
    end = "-----END CERTIFICATE-----"
    return [part.strip() + "\n" + end + "\n" for part in text.split(end) if part.strip()]

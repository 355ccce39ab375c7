"""``ssl`` contexts from certificates held as PEM text.

``ssl`` loads a private key only from a file, so the key is written to a
private temporary file (0600, in a 0700 directory) for the moment it is loaded.
A context keeps what it loaded; ``add_certificate`` loads a renewed certificate
into an existing context, which new connections use while open ones carry on.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Iterable

__all__ = ["add_certificate", "client_context", "server_context"]


def add_certificate(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """Load ``cert_pem`` and its key into ``context`` (replacing what it presented)."""
    with tempfile.TemporaryDirectory(prefix="aether-tls-") as tmp:
        path = os.path.join(tmp, "identity.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(cert_pem.strip() + "\n" + key_pem.strip() + "\n")
        context.load_cert_chain(path)


def _trust(context: ssl.SSLContext, authorities: Iterable[str]) -> None:
    pems = "\n".join(a.strip() for a in authorities)
    if not pems:
        raise ValueError("no certificate authority to trust")
    context.load_verify_locations(cadata=pems)


def server_context(cert_pem: str, key_pem: str, authorities: Iterable[str]) -> ssl.SSLContext:
    """Serving ``cert_pem``; a client must present a certificate one of ``authorities`` signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    add_certificate(context, cert_pem, key_pem)
    _trust(context, authorities)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    authorities: Iterable[str], cert_pem: str | None = None, key_pem: str | None = None
) -> ssl.SSLContext:
    """Verifying servers against ``authorities`` (host names checked); presenting
    ``cert_pem`` when given (mutual TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _trust(context, authorities)
    if cert_pem is not None and key_pem is not None:
        add_certificate(context, cert_pem, key_pem)
    return context

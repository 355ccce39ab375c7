"""A test certificate authority: leaf certificates for host names, written as PEM files."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509

from aether.trust import ca

__all__ = ["TestCA"]


class TestCA:
    """A CA whose certificate is at ``ca_path``; ``issue`` writes ``NAME.crt``/``NAME.key``."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path) -> None:
        self._authority = ca.new_authority("test", datetime.datetime.now(datetime.UTC), days=1)
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_text(self._authority.cert_pem)

    def issue(self, directory: Path, file_name: str, *names: str) -> int:
        """Write ``file_name.crt``/``.key`` into ``directory`` for DNS names (or IPs)
        ``names``; the certificate's serial number."""
        key = ca.new_key()
        pem = ca.issue(
            self._authority,
            public_key=key.public_key(),
            uri=None,
            hosts=names or (file_name,),
            now=datetime.datetime.now(datetime.UTC),
            lifetime=datetime.timedelta(days=1),
            backdate=datetime.timedelta(minutes=5),
        )
        directory.mkdir(parents=True, exist_ok=True)
        # the key first, then the certificate: a reader between the two sees a pair
        # that does not match (as with a renewal tool), which must not be served
        (directory / f"{file_name}.key").write_text(ca.key_pem(key))
        (directory / f"{file_name}.crt").write_text(pem)
        serial: int = x509.load_pem_x509_certificate(pem.encode()).serial_number
        return serial

"""Content digests: the one spelling of an artifact's address, ``sha256:<64 lowercase hex>``.

One canonical form (no upper case, no bare hex) means a digest can be compared as a
string, used as a file name and put in a URL without further normalisation.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from aether.errors import BadRequestError

__all__ = [
    "DIGEST_ALGORITHM",
    "DIGEST_PREFIX",
    "Hasher",
    "digest_bytes",
    "digest_file",
    "digest_hex",
    "parse_digest",
]

DIGEST_ALGORITHM = "sha256"
DIGEST_PREFIX = "sha256:"
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_FILE_CHUNK = 1 << 20


def parse_digest(value: str) -> str:
    """Return ``value`` if it is a canonical digest, else raise BadRequestError(code="bad_digest").

    Strict on purpose: digests become paths and URLs, so anything but the one
    canonical spelling is refused rather than silently rewritten.
    """
    if not isinstance(value, str) or _DIGEST_RE.fullmatch(value) is None:
        shown = repr(value) if len(repr(value)) <= 100 else repr(value)[:97] + "..."
        raise BadRequestError(
            f"invalid digest {shown}: expected 'sha256:' followed by 64 lowercase hex digits",
            code="bad_digest",
        )
    return value


def digest_hex(digest: str) -> str:
    """The 64 hex digits of a (validated) digest, e.g. for a file name."""
    return parse_digest(digest)[len(DIGEST_PREFIX) :]


def digest_bytes(data: bytes | bytearray | memoryview) -> str:
    """The digest of ``data`` in canonical form."""
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


class Hasher:
    """Incremental digest plus byte count, for data that arrives in chunks."""

    __slots__ = ("_h", "size")

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        """The bare hex digest of everything fed so far (manifest form)."""
        return self._h.hexdigest()

    def digest(self) -> str:
        """The canonical ``sha256:<hex>`` digest of everything fed so far."""
        return DIGEST_PREFIX + self._h.hexdigest()


def digest_file(path: Path, *, chunk_size: int = _FILE_CHUNK) -> tuple[str, int]:
    """``(digest, size)`` of a file, read in chunks so memory stays flat."""
    h = Hasher()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.digest(), h.size

"""Content digests: the one spelling of an artifact's address, ``sha256:<64 lowercase hex>``.

Digests are accepted as ``sha256:<hex>`` or as the bare ``<hex>`` (64 hex digits of
either case) and turned into the one canonical form at the edge (``parse_digest``):
from then on a digest can be compared as a string, used as a file name and put in a
URL without further normalisation, and every answer spells it canonically.
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
_DIGEST_RE = re.compile(r"(?:sha256:)?([0-9a-fA-F]{64})")
_FILE_CHUNK = 1 << 20


def parse_digest(value: str) -> str:
    """The canonical ``sha256:<lowercase hex>`` of ``value``, else ``invalid_digest`` (400).

    ``value`` is ``sha256:`` + 64 hex digits or the 64 hex digits alone, in either
    case (the prefix itself is lower case). Anything else is refused rather than
    guessed at: digests become paths and URLs.
    """
    match = _DIGEST_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        shown = repr(value) if len(repr(value)) <= 100 else repr(value)[:97] + "..."
        raise BadRequestError(
            f"invalid digest {shown}: expected 64 hex digits, optionally prefixed with 'sha256:'",
            code="invalid_digest",
        )
    return DIGEST_PREFIX + match.group(1).lower()


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

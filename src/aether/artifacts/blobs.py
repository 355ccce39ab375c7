"""Per-file blobs for incremental uploads: content-addressed, verified before visible.

A blob is the content of one file of an artifact, addressed by its sha256 like an
artifact is. The store keeps one namespace per tenant
(``root/<tenant>/sha256/<first 2 hex>/<hex>``): a tenant can only build artifacts
from contents it uploaded itself, so asking "which of these do you have?" reveals
nothing about other tenants' files, and the artifact registry's rule (an artifact
is visible to a tenant only after it sent the bytes) carries over to assembled
artifacts.

Each namespace is a ``LocalArtifactRegistry`` over its own directory, so blobs get
the same guarantees: streamed to a temp file, hashed, published with ``link()``
only when the hash matched; a mismatch, an overrun or a cancelled upload leaves
nothing behind. Blobs are a cache: an assembled artifact is stored whole in the
artifact registry, so deleting blobs never breaks a deployment (a later
incremental upload just sends those files again).
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from aether.artifacts.digest import DIGEST_PREFIX, parse_digest
from aether.artifacts.registry import LocalArtifactRegistry
from aether.errors import BadRequestError, NotFoundError

__all__ = ["LocalBlobStore", "TenantBlobs"]

_TENANT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class TenantBlobs(LocalArtifactRegistry):
    """One tenant's blobs; the registry's verified-write contract, per file content."""

    def path(self, digest: str) -> Path:
        p = self._object_path(digest)
        if not p.is_file():
            raise NotFoundError(f"blob {digest} not found")
        return p

    def open_blob(self, sha256_hex: str) -> IO[bytes]:
        """Open a stored blob by bare hex (``write_plan``'s ``open_blob``); blocking."""
        return open(self.path(DIGEST_PREFIX + sha256_hex), "rb")

    async def missing(self, digests: Iterable[str]) -> list[str]:
        """The digests not stored here, deduplicated, in the order given.

        Present blobs are touched: garbage collection drops blobs idle past its
        grace period, and one a deploy is about to reuse is not idle.
        """
        wanted = [parse_digest(d) for d in dict.fromkeys(digests)]

        def scan() -> list[str]:
            absent = []
            for d in wanted:
                try:
                    os.utime(self._object_path(d))
                except FileNotFoundError:
                    absent.append(d)
            return absent

        return await asyncio.to_thread(scan)

    def temp_file(self) -> tuple[int, str]:
        """A fresh temp file beside the blobs (same filesystem), as ``mkstemp`` returns it."""
        return tempfile.mkstemp(prefix="assemble-", suffix=".tmp", dir=self._tmp)


class LocalBlobStore:
    """Blob namespaces under ``root``, one per tenant, created on first use."""

    def __init__(self, root: Path, *, max_bytes: int = 2 << 30) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._tenants: dict[str, TenantBlobs] = {}

    def for_tenant(self, tenant_id: str) -> TenantBlobs:
        store = self._tenants.get(tenant_id)
        if store is None:
            if _TENANT_RE.fullmatch(tenant_id) is None:
                raise BadRequestError(f"invalid tenant id {tenant_id!r}")
            store = TenantBlobs(self.root / tenant_id, max_bytes=self.max_bytes)
            self._tenants[tenant_id] = store
        return store

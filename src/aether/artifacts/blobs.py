"""Per-file blobs for incremental uploads: content-addressed, verified before visible.

A blob is the content of one file of an artifact, addressed by its sha256 like an
artifact is. The store keeps one namespace per tenant: a tenant can only build
artifacts from contents it uploaded itself, so asking "which of these do you
have?" reveals nothing about other tenants' files, and the artifact registry's
rule (an artifact is visible to a tenant only after it sent the bytes) carries
over to assembled artifacts.

Two stores keep the ``BlobStore`` protocol, chosen with the artifact registry:

* ``LocalBlobStore`` (``DATA/blobs/<tenant>/sha256/<first 2 hex>/<hex>``): each
  namespace is a ``LocalArtifactRegistry`` over its own directory, so blobs get
  the same guarantees: streamed to a temp file, hashed, published with ``link()``
  only when the hash matched; a mismatch, an overrun or a cancelled upload
  leaves nothing behind.
* ``S3BlobStore`` (``<prefix>blobs/<tenant>/sha256/<hex>`` in the artifacts
  bucket): each namespace is an ``S3ArtifactRegistry`` sharing the registry's
  client, with the same verified-before-visible uploads. Every server behind the
  bucket sees every blob, so a client may upload blobs through one server and
  assemble through another. Assembly first downloads the plan's blobs (a few at
  a time) into a temp directory beside the archive it writes.

Blobs are a cache: an assembled artifact is stored whole in the artifact
registry, so deleting blobs never breaks a deployment (a later incremental upload
just sends those files again, and a client whose blobs vanished between upload
and assembly asks again, see ``aether.artifacts.sync``). ``aether gc`` drops
blobs idle past its grace period; ``missing()`` renews the ones a deploy reuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Protocol

from aether.artifacts.bounded import bounded_map
from aether.artifacts.digest import DIGEST_PREFIX, digest_hex, parse_digest
from aether.artifacts.registry import LocalArtifactRegistry, WriteResult
from aether.artifacts.s3 import S3ArtifactRegistry
from aether.errors import BadRequestError, NotFoundError

__all__ = [
    "BlobStore",
    "LocalBlobStore",
    "S3BlobStore",
    "S3TenantBlobs",
    "Staging",
    "TenantBlobStore",
    "TenantBlobs",
    "missing_blobs_error",
]

_TENANT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Digests named in a ``missing_blobs`` message; the rest are counted.
_SHOWN = 20
#: Concurrent HEAD requests of one ``missing()`` call, and blob downloads of one assembly.
_HEADS = 16
_DOWNLOADS = 8
#: ``missing()`` on S3 lists the tenant's blobs instead of HEADing each digest once it
#: asks about this many; the listing stops after one page per ``_LIST_RATIO`` digests
#: (a LIST costs about as much as a dozen HEADs) and HEADs the rest.
_LIST_FROM = 200
_LIST_RATIO = 50
_LIST_PAGE = 1000  # keys per listing page


def missing_blobs_error(missing: Sequence[str]) -> BadRequestError:
    """The ``missing_blobs`` refusal of an assembly (the client uploads them and retries)."""
    shown = ", ".join(missing[:_SHOWN])
    more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
    return BadRequestError(
        f"{len(missing)} blob(s) of the plan are not on the server: {shown}{more}; "
        "upload them (PUT /api/v1/blobs/{digest}) and assemble again",
        code="missing_blobs",
    )


class Staging(Protocol):
    """The plan's blobs, readable with blocking calls while an archive is written."""

    def open_blob(self, sha256_hex: str) -> IO[bytes]:
        """Open one blob by bare hex (``write_plan``'s ``open_blob``); blocking."""
        ...

    def temp_file(self) -> tuple[int, str]:
        """A fresh temp file for the assembled archive, as ``mkstemp`` returns it."""
        ...


class TenantBlobStore(Protocol):
    """One tenant's blobs."""

    async def missing(self, digests: Iterable[str]) -> list[str]:
        """The digests not stored, deduplicated, in the order given; renews present ones."""
        ...

    async def write_stream(self, chunks: AsyncIterable[bytes], expected_digest: str) -> WriteResult:
        """Store one blob once its bytes hashed to ``expected_digest`` (the registry contract)."""
        ...

    def staged(self, digests: Sequence[str]) -> AbstractAsyncContextManager[Staging]:
        """Make ``digests`` readable for ``write_plan``; ``missing_blobs`` if one is gone."""
        ...


class BlobStore(Protocol):
    """Every tenant's blobs, and their housekeeping (``aether gc``)."""

    def for_tenant(self, tenant_id: str) -> TenantBlobStore: ...

    async def delete_stale(self, cutoff: datetime, *, dry_run: bool = False) -> int:
        """Delete the blobs last written or reused before ``cutoff``; how many (would be)."""
        ...

    async def abort_stale_uploads(
        self, now: datetime, older_than: timedelta, *, dry_run: bool = False
    ) -> int:
        """Clear uploads orphaned by a crash (begun before ``now - older_than``); how many."""
        ...


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

    @contextlib.asynccontextmanager
    async def staged(self, digests: Sequence[str]) -> AsyncIterator[Staging]:
        """The blobs are local files already: read them in place."""
        yield self


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

    async def delete_stale(self, cutoff: datetime, *, dry_run: bool = False) -> int:
        """Blob files whose mtime (written, or reused by ``missing()``) is before ``cutoff``."""
        stale = await asyncio.to_thread(self._old_files, cutoff.timestamp(), temp=False)
        if not dry_run:
            for path in stale:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return len(stale)

    async def abort_stale_uploads(
        self, now: datetime, older_than: timedelta, *, dry_run: bool = False
    ) -> int:
        """Temp files of uploads or assemblies a crash left behind (untouched for that long)."""
        stale = await asyncio.to_thread(self._old_files, (now - older_than).timestamp(), temp=True)
        if not dry_run:
            for path in stale:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return len(stale)

    def _old_files(self, older_than: float, *, temp: bool) -> list[Path]:
        if not self.root.exists():
            return []
        return [
            p
            for p in self.root.rglob("*")
            if p.is_file()
            and ("tmp" in p.relative_to(self.root).parts) == temp
            and p.stat().st_mtime < older_than
        ]


class _LocalCopies:
    """Blobs downloaded into one directory (``S3TenantBlobs.staged``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def open_blob(self, sha256_hex: str) -> IO[bytes]:
        try:
            return open(self.directory / sha256_hex, "rb")
        except FileNotFoundError:
            raise NotFoundError(f"blob sha256:{sha256_hex} was not staged") from None

    def temp_file(self) -> tuple[int, str]:
        return tempfile.mkstemp(prefix="assemble-", suffix=".tmp", dir=self.directory)


class S3TenantBlobs:
    """One tenant's blobs in the bucket: an ``S3ArtifactRegistry`` under its own prefix."""

    def __init__(self, objects: S3ArtifactRegistry, scratch: Path, refresh_after: float) -> None:
        self.objects = objects
        self.scratch = scratch
        self.refresh_after = refresh_after

    async def write_stream(self, chunks: AsyncIterable[bytes], expected_digest: str) -> WriteResult:
        return await self.objects.write_stream(chunks, expected_digest)

    async def missing(self, digests: Iterable[str]) -> list[str]:
        """The digests not in the bucket (a listing for many, else HEADs, a few at a time).

        Present blobs older than ``refresh_after`` seconds are renewed (copied onto
        themselves), so garbage collection by age spares the ones deploys reuse.
        """
        wanted = [parse_digest(d) for d in dict.fromkeys(digests)]
        seen: dict[str, datetime] = {}
        unknown = wanted
        if len(wanted) >= _LIST_FROM:
            seen, unknown = await self._listed(wanted)
        present = await bounded_map(_HEADS, unknown, self.objects.stat)
        for digest, found in zip(unknown, present, strict=True):
            if found is not None:
                seen[digest] = found[1]
        renew_before = datetime.now(UTC) - timedelta(seconds=self.refresh_after)
        old = [d for d, modified in seen.items() if modified < renew_before]
        touched = await bounded_map(_HEADS, old, self.objects.touch)
        for digest, ok in zip(old, touched, strict=True):
            if not ok:  # deleted since it was listed
                del seen[digest]
        return [d for d in wanted if d not in seen]

    async def _listed(self, wanted: list[str]) -> tuple[dict[str, datetime], list[str]]:
        """List the tenant's blobs up to a page budget: (found, digests still unknown).

        S3 lists keys in order, so every wanted digest up to the last key listed is
        settled by the listing; the ones past it are left to HEAD requests.
        """
        budget = max(1, len(wanted) // _LIST_RATIO) * _LIST_PAGE
        wanted_set = set(wanted)
        found: dict[str, datetime] = {}
        last = ""
        complete = True
        listing = self.objects.list_objects()
        try:
            async for digest, modified in listing:
                if digest <= last:  # not in key order: trust nothing but what was found
                    last = ""
                    complete = False
                    break
                last = digest
                if digest in wanted_set:
                    found[digest] = modified
                budget -= 1
                if budget <= 0:
                    complete = False
                    break
        finally:
            await listing.aclose()
        if complete:
            return found, []
        return found, [d for d in wanted if d not in found and d > last]

    @contextlib.asynccontextmanager
    async def staged(self, digests: Sequence[str]) -> AsyncIterator[Staging]:
        """Download the blobs into a temp directory; it goes (with the archive) on exit."""
        await asyncio.to_thread(self.scratch.mkdir, parents=True, exist_ok=True)
        directory = Path(
            await asyncio.to_thread(tempfile.mkdtemp, prefix="assemble-", dir=self.scratch)
        )
        try:
            wanted = [parse_digest(d) for d in dict.fromkeys(digests)]
            fetched = await bounded_map(_DOWNLOADS, wanted, lambda d: self._download(d, directory))
            gone = [d for d, ok in zip(wanted, fetched, strict=True) if not ok]
            if gone:  # deleted (gc) since the client asked: it uploads them again
                raise missing_blobs_error(gone)
            yield _LocalCopies(directory)
        finally:
            await asyncio.to_thread(shutil.rmtree, directory, True)

    async def _download(self, digest: str, directory: Path) -> bool:
        try:
            chunks = await self.objects.open_chunks(digest)
        except NotFoundError:
            return False
        try:
            with open(directory / digest_hex(digest), "wb") as sink:
                async for chunk in chunks:
                    await asyncio.to_thread(sink.write, chunk)
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:  # the S3 body, if the copy stopped half-way
                await close()
        return True


class S3BlobStore:
    """Blob namespaces ``<prefix>blobs/<tenant>/sha256/`` in the artifact registry's bucket.

    ``scratch`` is a local directory for assemblies; ``refresh_after`` the age (seconds)
    past which ``missing()`` renews a reused blob (half the gc grace period).
    """

    def __init__(
        self,
        registry: S3ArtifactRegistry,
        scratch: Path,
        *,
        max_bytes: int = 2 << 30,
        refresh_after: float = 1800.0,
    ) -> None:
        self.registry = registry
        self.scratch = Path(scratch)
        self.max_bytes = max_bytes
        self.refresh_after = refresh_after
        self._tenants: dict[str, S3TenantBlobs] = {}

    def for_tenant(self, tenant_id: str) -> S3TenantBlobs:
        store = self._tenants.get(tenant_id)
        if store is None:
            if _TENANT_RE.fullmatch(tenant_id) is None:
                raise BadRequestError(f"invalid tenant id {tenant_id!r}")
            objects = self.registry.sharing(f"blobs/{tenant_id}/sha256/", max_bytes=self.max_bytes)
            store = S3TenantBlobs(objects, self.scratch, self.refresh_after)
            self._tenants[tenant_id] = store
        return store

    async def delete_stale(self, cutoff: datetime, *, dry_run: bool = False) -> int:
        """Blobs of every tenant whose LastModified (written or renewed) is before ``cutoff``."""
        stale = [
            key async for key, modified in self.registry.list_keys("blobs/") if modified < cutoff
        ]
        if stale and not dry_run:
            await self.registry.delete_keys(stale)
        return len(stale)

    async def abort_stale_uploads(
        self, now: datetime, older_than: timedelta, *, dry_run: bool = False
    ) -> int:
        """What a crashed server left: multipart uploads of blobs (see ``S3ArtifactRegistry``)
        and assembly directories in ``scratch``."""
        aborted = await self.registry.abort_stale_uploads(
            now, older_than, under="blobs/", dry_run=dry_run
        )
        return aborted + await asyncio.to_thread(
            _sweep, self.scratch, (now - older_than).timestamp(), dry_run
        )


def _sweep(scratch: Path, older_than: float, dry_run: bool) -> int:
    """Remove the entries of ``scratch`` last modified before ``older_than``; how many."""
    if not scratch.is_dir():
        return 0
    stale = [p for p in scratch.iterdir() if p.lstat().st_mtime < older_than]
    if not dry_run:
        for path in stale:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return len(stale)

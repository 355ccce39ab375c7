"""Artifacts in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, ``rclone serve s3``).

Configured with ``AETHER_ARTIFACTS_URL=s3://bucket/prefix`` (see ``docs/operations.md``);
the local directory stays the default. Objects live at ``<prefix>sha256/<hex>``; the
per-file blobs of incremental uploads beside them at ``<prefix>blobs/<tenant>/sha256/<hex>``
(``aether.artifacts.blobs.S3BlobStore``), so every server behind one bucket shares them.

The registry contract (``ArtifactBackend``) carries over:

* **Verified before visible.** The upload is hashed while it streams. An artifact
  smaller than one part is held in memory (at most ``part_size`` bytes) and PUT
  only after its digest matched. A larger one goes through a multipart upload
  *of the final key*: S3 makes nothing visible until ``CompleteMultipartUpload``,
  which is sent only after the whole stream hashed to the declared digest. On a
  mismatch, an overrun, a client that went away or a cancellation the multipart
  upload is aborted, so nothing is left behind. (A server that crashes mid-upload
  leaves an incomplete multipart upload, invisible to readers: a bucket lifecycle
  rule ``AbortIncompleteMultipartUpload`` reaps those; ``abort_stale_uploads``
  does it by hand.)
* **Streaming.** At most one part (``part_size``, default 8 MiB) of an upload is
  in memory; reads stream the object's body in chunks.
* **First writer wins.** A digest already present is hashed but not rewritten
  (``duplicate=True``). Within one process the final existence check and the
  publish are serialised per digest, so concurrent writers of one digest see
  exactly one ``duplicate=False``. Across processes the publish is sent with
  ``If-None-Match: *`` (honoured by AWS S3 and recent MinIO: the loser is told
  ``duplicate=True``); a server that ignores the header rewrites the key with
  the very same bytes, which content addressing makes harmless (a store that
  answers ``NotImplemented`` to the header gets plain writes from then on).

The event loop never blocks: the client is ``aiobotocore`` (aiohttp underneath),
and large chunks are hashed on a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from aether.artifacts.digest import DIGEST_PREFIX, Hasher, digest_hex, parse_digest
from aether.artifacts.registry import WriteResult
from aether.errors import (
    DigestMismatchError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)

if TYPE_CHECKING:
    from aiobotocore.response import StreamingBody
    from types_aiobotocore_s3.client import S3Client

    from aether.artifacts.registry import ArtifactBackend

__all__ = ["S3ArtifactRegistry", "S3Config", "parse_s3_url"]

MIN_PART_SIZE = 5 << 20  # S3's minimum for every part but the last
DEFAULT_PART_SIZE = 8 << 20
_DEFAULT_CHUNK = 1 << 20
_INLINE_LIMIT = 256 << 10  # chunks at least this big are hashed on a worker thread
_LOCK_STRIPES = 64
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_ALREADY_THERE = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}
_UNSUPPORTED = {"501", "NotImplemented"}  # a store without conditional writes


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix/")``; ValueError if malformed."""
    if not url.startswith("s3://"):
        raise ValueError(f"an S3 artifacts URL looks like s3://bucket/prefix, not {url!r}")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if _BUCKET_RE.fullmatch(bucket) is None or ".." in bucket:
        raise ValueError(
            f"invalid S3 bucket name {bucket!r} in {url!r}: 3-63 characters of a-z, 0-9, '.', '-'"
        )
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ValueError(f"invalid S3 key prefix {prefix!r} in {url!r}")
    return bucket, (prefix + "/" if prefix else "")


@dataclass(frozen=True, slots=True)
class S3Config:
    """Where and how to reach the bucket. Empty keys: the default AWS credential chain."""

    bucket: str
    prefix: str = ""  # "" or ending in "/"
    endpoint_url: str | None = None  # None: AWS itself
    access_key: str | None = None
    secret_key: str | None = None
    region: str = "us-east-1"
    part_size: int = DEFAULT_PART_SIZE
    max_connections: int = 100  # each streaming download holds one while it is read
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # seconds without a byte from the store
    max_attempts: int = 3  # per request, retrying throttling and transient errors

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> S3Config:
        bucket, prefix = parse_s3_url(url)
        return cls(bucket=bucket, prefix=prefix, **kwargs)

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 part size must be at least {MIN_PART_SIZE} bytes")
        if self.prefix and not self.prefix.endswith("/"):
            raise ValueError("S3 key prefix must be empty or end with '/'")


@contextlib.contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """Turn the store's failures into the API's ``service_unavailable``."""
    try:
        yield
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise ServiceUnavailableError(
            f"artifact store (S3) failed to {what}: {err.get('Code', '?')}: "
            f"{err.get('Message', exc)}"
        ) from exc
    except BotoCoreError as exc:
        raise ServiceUnavailableError(
            f"artifact store (S3) unreachable while trying to {what}: {exc}"
        ) from exc


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class _BodyChunks:
    """Chunks of exactly ``chunk_size`` bytes (the last may be shorter) of an S3 body."""

    def __init__(self, body: StreamingBody, chunk_size: int) -> None:
        self._body = body
        self._chunk_size = chunk_size
        self._done = False

    def __aiter__(self) -> _BodyChunks:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        parts: list[bytes] = []
        wanted = self._chunk_size
        try:
            while wanted > 0:
                data = await self._body.read(wanted)
                if not data:
                    break
                parts.append(data)
                wanted -= len(data)
        except BaseException:
            self._close()
            raise
        if wanted > 0:  # end of the object
            self._close()
        if not parts:
            raise StopAsyncIteration
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _close(self) -> None:
        if not self._done:
            self._done = True
            self._body.close()

    async def aclose(self) -> None:
        self._close()


class S3ArtifactRegistry:
    """Artifacts as objects ``<prefix>sha256/<hex>`` in one bucket (see the module doc).

    Call ``await open()`` (checks the bucket is reachable) before use and
    ``await aclose()`` at shutdown; ``async with`` does both.

    ``key_prefix`` (below the configured prefix; default ``sha256/``) places the
    objects elsewhere in the bucket: ``sharing`` makes such a registry over the same
    open client, which is how per-file blobs live beside the artifacts
    (``aether.artifacts.blobs.S3BlobStore``).
    """

    def __init__(
        self, config: S3Config, *, max_bytes: int = 2 << 30, key_prefix: str = "sha256/"
    ) -> None:
        if key_prefix.startswith("/") or not key_prefix.endswith("/"):
            raise ValueError("an S3 key prefix must not start with '/' and must end with '/'")
        self.config = config
        self.max_bytes = max_bytes
        #: every object of this registry is ``<objects><hex>``
        self.objects = config.prefix + key_prefix
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: S3Client | None = None
        self._owner: S3ArtifactRegistry | None = None  # set: its client is borrowed
        self._locks = [asyncio.Lock() for _ in range(_LOCK_STRIPES)]
        #: publish with ``If-None-Match: *``; turned off if the store answers NotImplemented
        self.conditional_writes = True

    # -- lifecycle ------------------------------------------------------------------------

    def sharing(self, key_prefix: str, *, max_bytes: int | None = None) -> S3ArtifactRegistry:
        """A registry of objects ``<prefix><key_prefix><hex>`` using this one's client.

        It is open while this one is; closing it does nothing (this one owns the client).
        """
        other = S3ArtifactRegistry(
            self.config,
            max_bytes=self.max_bytes if max_bytes is None else max_bytes,
            key_prefix=key_prefix,
        )
        other._owner = self
        return other

    async def open(self) -> S3ArtifactRegistry:
        """Create the client and check the bucket answers (ServiceUnavailableError if not)."""
        if self._owner is not None:
            await self._owner.open()
            return self
        if self._client is not None:
            return self
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        cfg = self.config
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=cfg.endpoint_url,
                region_name=cfg.region,
                aws_access_key_id=cfg.access_key or None,
                aws_secret_access_key=cfg.secret_key or None,
                config=AioConfig(
                    s3={"addressing_style": "path" if cfg.endpoint_url else "auto"},
                    # our own sha256 covers the content; extra CRC headers confuse
                    # some S3-compatible servers
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    max_pool_connections=cfg.max_connections,
                    connect_timeout=cfg.connect_timeout,
                    read_timeout=cfg.read_timeout,
                    retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
                ),
            )
        )
        try:
            with _s3_errors(f"reach bucket {cfg.bucket!r} at {cfg.endpoint_url or 'AWS'}"):
                await client.head_bucket(Bucket=cfg.bucket)
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._client = stack, client
        return self

    async def aclose(self) -> None:
        """Close the client (a registry made by ``sharing`` leaves its owner's open)."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> S3ArtifactRegistry:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def client(self) -> S3Client:
        if self._owner is not None:
            return self._owner.client
        if self._client is None:
            raise RuntimeError("S3ArtifactRegistry used before open()")
        return self._client

    def key(self, digest: str) -> str:
        """The object key of ``digest`` (validates it: BadRequestError ``invalid_digest``)."""
        return self.objects + digest_hex(digest)

    # -- reads ----------------------------------------------------------------------------

    async def exists(self, digest: str) -> bool:
        return await self.size(digest) is not None

    async def size(self, digest: str) -> int | None:
        found = await self.stat(digest)
        return None if found is None else found[0]

    async def stat(self, digest: str) -> tuple[int, datetime] | None:
        """``(size, LastModified)`` of the stored object, or None if it is absent."""
        key = self.key(digest)
        with _s3_errors("look up an object"):
            try:
                head = await self.client.head_object(Bucket=self.config.bucket, Key=key)
            except ClientError as exc:
                if _error_code(exc) in _NOT_FOUND:
                    return None
                raise
        return int(head["ContentLength"]), _utc(head.get("LastModified"))

    async def touch(self, digest: str) -> bool:
        """Renew an object's LastModified (a copy onto itself); False if it is absent.

        The bytes stay the same (S3 copies them server-side), so readers never see
        a change; age-based clean-up (``aether gc``) then counts from now.
        """
        key = self.key(digest)
        with _s3_errors("touch an object"):
            try:
                await self.client.copy_object(
                    Bucket=self.config.bucket,
                    Key=key,
                    CopySource={"Bucket": self.config.bucket, "Key": key},
                    MetadataDirective="REPLACE",
                    Metadata={"touched": "1"},
                )
            except ClientError as exc:
                if _error_code(exc) in _NOT_FOUND:
                    return False
                raise
        return True

    async def open_chunks(
        self, digest: str, chunk_size: int = _DEFAULT_CHUNK
    ) -> AsyncIterator[bytes]:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        key = self.key(digest)
        with _s3_errors("read an artifact"):
            try:
                resp = await self.client.get_object(Bucket=self.config.bucket, Key=key)
            except ClientError as exc:
                if _error_code(exc) in _NOT_FOUND:
                    raise NotFoundError(f"artifact {digest} not found") from None
                raise
        return _BodyChunks(resp["Body"], chunk_size)

    async def list_digests(self) -> list[str]:
        return sorted([digest async for digest, _ in self.list_objects()])

    async def list_objects(
        self, *, start_after: str | None = None
    ) -> AsyncGenerator[tuple[str, datetime], None]:
        """``(digest, LastModified)`` of the stored objects in key (= digest) order.

        ``start_after`` (a digest) skips the digests up to and including it.
        """
        prefix = self.objects
        with _s3_errors("list objects"):
            paginator = self.client.get_paginator("list_objects_v2")
            if start_after is None:
                pages = paginator.paginate(Bucket=self.config.bucket, Prefix=prefix)
            else:
                pages = paginator.paginate(
                    Bucket=self.config.bucket, Prefix=prefix, StartAfter=self.key(start_after)
                )
            async for page in pages:
                for obj in page.get("Contents", []):
                    name = obj.get("Key", "").removeprefix(prefix)
                    if len(name) != 64 or "/" in name:
                        continue
                    try:
                        digest = parse_digest(DIGEST_PREFIX + name)
                    except Exception:
                        continue
                    if digest != DIGEST_PREFIX + name:  # canonical (lower-case) keys only
                        continue
                    modified = obj.get("LastModified")
                    yield digest, _utc(modified)

    # -- writes ---------------------------------------------------------------------------

    async def delete(self, digest: str) -> None:
        key = self.key(digest)
        with _s3_errors("delete an artifact"):
            await self.client.delete_object(Bucket=self.config.bucket, Key=key)

    async def delete_many(self, digests: list[str]) -> None:
        """Delete several objects, up to 1000 per request; idempotent like ``delete``."""
        await self.delete_keys([self.key(d) for d in digests])

    async def list_keys(self, under: str) -> AsyncIterator[tuple[str, datetime]]:
        """``(key, LastModified)`` of every object whose key starts ``<prefix><under>``."""
        with _s3_errors("list objects"):
            paginator = self.client.get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=self.config.bucket, Prefix=self.config.prefix + under)
            async for page in pages:
                for obj in page.get("Contents", []):
                    yield obj.get("Key", ""), _utc(obj.get("LastModified"))

    async def delete_keys(self, keys: list[str]) -> None:
        """Delete objects by full key, up to 1000 per request; absent keys are no error."""
        with _s3_errors("delete objects"):
            for start in range(0, len(keys), 1000):
                batch: Any = {
                    "Objects": [{"Key": k} for k in keys[start : start + 1000]],
                    "Quiet": True,
                }
                resp = await self.client.delete_objects(Bucket=self.config.bucket, Delete=batch)
                failed = [e for e in resp.get("Errors", []) if e.get("Code") not in _NOT_FOUND]
                if failed:
                    first = failed[0]
                    raise ServiceUnavailableError(
                        f"artifact store (S3) failed to delete {len(failed)} object(s): "
                        f"{first.get('Key')}: {first.get('Code')}: {first.get('Message')}"
                    )

    async def write_stream(self, chunks: AsyncIterable[bytes], expected_digest: str) -> WriteResult:
        expected = parse_digest(expected_digest)
        key = self.key(expected)
        if await self.exists(expected):
            size = await self._consume(chunks, expected)
            return WriteResult(expected, size, duplicate=True)
        return await _Upload(self, key, expected).run(chunks)

    async def _consume(self, chunks: AsyncIterable[bytes], expected: str) -> int:
        """Hash a stream without storing it (a duplicate upload); DigestMismatchError if wrong."""
        hasher = Hasher()
        async for chunk in chunks:
            if chunk:
                self._check_size(hasher.size + len(chunk))
                await _hash(hasher, chunk)
        _verify(hasher, expected)
        return hasher.size

    def _check_size(self, total: int) -> None:
        if total > self.max_bytes:
            raise PayloadTooLargeError(
                f"artifact exceeds the {self.max_bytes}-byte limit of this registry"
            )

    def _lock(self, digest: str) -> asyncio.Lock:
        return self._locks[int(digest_hex(digest)[:8], 16) % _LOCK_STRIPES]

    async def abort_stale_uploads(
        self,
        now: datetime,
        older_than: timedelta,
        *,
        under: str | None = None,
        dry_run: bool = False,
    ) -> int:
        """Abort multipart uploads under our key prefix begun before ``now - older_than``.

        Only for uploads orphaned by a crashed server: a live upload younger than
        ``older_than`` is left alone. ``under`` (below the configured prefix, e.g.
        ``blobs/``) widens or moves the scope. Returns how many were aborted (with
        ``dry_run``: how many would be).
        """
        aborted = 0
        cutoff = now - older_than
        prefix = self.objects if under is None else self.config.prefix + under
        with _s3_errors("list incomplete uploads"):
            paginator = self.client.get_paginator("list_multipart_uploads")
            try:
                async for page in paginator.paginate(Bucket=self.config.bucket, Prefix=prefix):
                    for up in page.get("Uploads", []):
                        started = up.get("Initiated")
                        if started is None or started.astimezone(UTC) >= cutoff:
                            continue
                        if dry_run:
                            aborted += 1
                            continue
                        with contextlib.suppress(ClientError):
                            await self.client.abort_multipart_upload(
                                Bucket=self.config.bucket, Key=up["Key"], UploadId=up["UploadId"]
                            )
                            aborted += 1
            except ClientError as exc:
                if _error_code(exc) != "NoSuchUpload":  # rclone's answer for "none at all"
                    raise
        return aborted


class _Upload:
    """One verified upload: a single PUT when small, else a multipart upload of the key."""

    def __init__(self, registry: S3ArtifactRegistry, key: str, expected: str) -> None:
        self.reg = registry
        self.client = registry.client
        self.bucket = registry.config.bucket
        self.key = key
        self.expected = expected
        self.hasher = Hasher()
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    async def run(self, chunks: AsyncIterable[bytes]) -> WriteResult:
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                self.reg._check_size(self.hasher.size + len(chunk))
                await _hash(self.hasher, chunk)
                self.buffer.append(chunk)
                self.buffered += len(chunk)
                if self.buffered >= self.reg.config.part_size:
                    await self._flush_part()
            _verify(self.hasher, self.expected)
            duplicate = await self._publish()
        except BaseException:
            await self._abort()
            raise
        return WriteResult(self.expected, self.hasher.size, duplicate=duplicate)

    def _take_buffer(self) -> bytes:
        data = b"".join(self.buffer)
        self.buffer.clear()
        self.buffered = 0
        return data

    async def _flush_part(self) -> None:
        data = self._take_buffer()
        with _s3_errors("store an upload part"):
            if self.upload_id is None:
                mp = await self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)
                self.upload_id = mp["UploadId"]
            number = len(self.parts) + 1
            resp = await self.client.upload_part(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=data,
            )
        self.parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    async def _publish(self) -> bool:
        """Make the verified bytes visible; True if the digest was stored meanwhile."""
        async with self.reg._lock(self.expected):
            if await self.reg.exists(self.expected):
                await self._abort()
                return True
            if self.upload_id is not None and self.buffered:
                await self._flush_part()
            body = self._take_buffer() if self.upload_id is None else b""
            with _s3_errors("publish an artifact"):
                try:
                    await self._send(body, conditional=self.reg.conditional_writes)
                except ClientError as exc:
                    code = _error_code(exc)
                    if code in _ALREADY_THERE:  # another process won
                        await self._abort()
                        return True
                    if code not in _UNSUPPORTED or not self.reg.conditional_writes:
                        raise
                    self.reg.conditional_writes = False  # this store refuses If-None-Match
                    await self._send(body, conditional=False)
            self.upload_id = None  # completed: nothing to abort any more
            return False

    async def _send(self, body: bytes, *, conditional: bool) -> None:
        if self.upload_id is None:
            if conditional:
                await self.client.put_object(
                    Bucket=self.bucket, Key=self.key, Body=body, IfNoneMatch="*"
                )
            else:
                await self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body)
            return
        parts: Any = {"Parts": self.parts}
        if conditional:
            await self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload=parts,
                IfNoneMatch="*",
            )
        else:
            await self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload=parts
            )

    async def _abort(self) -> None:
        upload_id, self.upload_id = self.upload_id, None
        if upload_id is not None:
            await _shielded_abort(self.client, self.bucket, self.key, upload_id)


async def _hash(hasher: Hasher, chunk: bytes) -> None:
    if len(chunk) >= _INLINE_LIMIT:
        await asyncio.to_thread(hasher.update, chunk)
    else:
        hasher.update(chunk)


def _utc(moment: datetime | None) -> datetime:
    return moment.astimezone(UTC) if moment is not None else datetime.fromtimestamp(0, UTC)


def _verify(hasher: Hasher, expected: str) -> None:
    actual = hasher.digest()
    if actual != expected:
        raise DigestMismatchError(
            f"uploaded bytes have digest {actual}, but {expected} was declared"
        )


async def _shielded_abort(client: S3Client, bucket: str, key: str, upload_id: str) -> None:
    """Abort a multipart upload; best effort, and carried through if the caller is cancelled."""

    async def abort() -> None:
        with contextlib.suppress(ClientError, BotoCoreError):
            await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)

    task = asyncio.create_task(abort())
    _background.add(task)
    task.add_done_callback(_background.discard)
    await asyncio.shield(task)


_background: set[asyncio.Task[None]] = set()


if TYPE_CHECKING:

    def _conforms(r: S3ArtifactRegistry) -> ArtifactBackend:
        return r

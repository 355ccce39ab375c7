"""What the artifact registry tests share: payloads, streams, and what a backend left behind."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from botocore.exceptions import ClientError

from aether.artifacts import ArtifactBackend, LocalArtifactRegistry, digest_bytes
from aether.artifacts.s3 import MIN_PART_SIZE, S3ArtifactRegistry, S3Config
from tests.support.s3 import S3Server

__all__ = [
    "BIG",
    "BIG_DIGEST",
    "DATA",
    "DIGEST",
    "PART",
    "chunks",
    "in_progress",
    "leftovers",
    "read_all",
    "s3_config",
]

DATA = os.urandom(300_000) + b"end"
DIGEST = digest_bytes(DATA)
PART = MIN_PART_SIZE  # small parts, so a few MiB already make a multipart upload
BIG = os.urandom(2 * PART + 123_457)  # three parts
BIG_DIGEST = digest_bytes(BIG)


async def chunks(data: bytes, size: int = 64 << 10, *, pause: bool = False) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        if pause:
            await asyncio.sleep(0)
        yield data[i : i + size]


async def read_all(backend: ArtifactBackend, digest: str, chunk_size: int = 1 << 20) -> bytes:
    return b"".join([c async for c in await backend.open_chunks(digest, chunk_size)])


def s3_config(server: S3Server, bucket: str, **kwargs: object) -> S3Config:
    settings: dict[str, object] = {
        "endpoint_url": server.endpoint_url,
        "access_key": server.access_key,
        "secret_key": server.secret_key,
        "region": server.region,
        "part_size": PART,
        "read_timeout": 15.0,
        **kwargs,
    }
    return S3Config.from_url(f"s3://{bucket}/artifacts", **settings)


async def leftovers(backend: ArtifactBackend, s3_server: S3Server | None = None) -> set[str]:
    """Everything the backend stores: files on disk plus (S3) multipart uploads in progress."""
    if isinstance(backend, LocalArtifactRegistry):
        return {p.relative_to(backend.root).as_posix() for p in backend.root.rglob("*")}
    assert isinstance(backend, S3ArtifactRegistry) and s3_server is not None
    root = s3_server.root / backend.config.bucket
    out = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    out |= {f"upload:{key}" for key, _ in await in_progress(backend)}
    return out


async def in_progress(reg: S3ArtifactRegistry) -> list[tuple[str, str]]:
    """(key, upload id) of the multipart uploads in progress in the registry's bucket."""
    try:
        up = await reg.client.list_multipart_uploads(Bucket=reg.config.bucket)
    except ClientError as exc:  # rclone answers NoSuchUpload for a bucket that never had one
        if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
            return []
        raise
    return [(u.get("Key", ""), u.get("UploadId", "")) for u in up.get("Uploads", [])]

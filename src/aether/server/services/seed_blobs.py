"""Keep a whole uploaded artifact's files as blobs, so the next deploy can be incremental.

A first deploy sends one archive rather than hundreds of blobs
(``aether.artifacts.sync``, ``many_blobs``); without this the second deploy
would find no blobs and send them all. After an artifact is stored (it was
scanned as it streamed in), its regular files up to ``MAX_SEED_FILE`` bytes are
written to the uploading tenant's blob store (each verified against its own
sha256, like an upload) and their compressed members are kept for assembly.
It runs in the background and is best effort: a blob it misses is asked for
and sent by the next deploy, as after garbage collection.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import tarfile
from collections.abc import AsyncIterator

from aether.artifacts.framing import data_member
from aether.artifacts.members import MemberCache
from aether.server.context import ServerContext

__all__ = ["MAX_SEED_ARCHIVE", "MAX_SEED_FILE", "seed_in_background"]

log = logging.getLogger("aether.server.seed_blobs")

MAX_SEED_ARCHIVE = 256 << 20  # compressed bytes: larger archives are not seeded
MAX_SEED_FILE = 8 << 20
_running: set[asyncio.Task[None]] = set()


def _files(archive: bytes) -> dict[str, bytes]:
    """The archive's regular files up to ``MAX_SEED_FILE``, by ``sha256:<hex>``."""
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tf:
        for member in tf:
            if not member.isreg() or member.size > MAX_SEED_FILE:
                continue
            reader = tf.extractfile(member)
            if reader is None:
                continue
            content = reader.read()
            out["sha256:" + hashlib.sha256(content).hexdigest()] = content
    return out


async def _one(content: bytes) -> AsyncIterator[bytes]:
    yield content


async def seed(ctx: ServerContext, tenant_id: str, digest: str, members: MemberCache) -> int:
    """Store the artifact's files as the tenant's blobs; how many were new."""
    size = await ctx.registry.size(digest)
    if size is None or size > MAX_SEED_ARCHIVE:
        return 0
    data = bytearray()
    async for chunk in await ctx.registry.open_chunks(digest):
        data += chunk
    files = await asyncio.to_thread(_files, bytes(data))
    del data
    store = ctx.blobs.for_tenant(tenant_id)
    missing = await store.missing(list(files))
    for blob in missing:
        await store.write_stream(_one(files[blob]), blob)

    def compress() -> None:
        for blob, content in files.items():
            sha = blob.removeprefix("sha256:")
            if members.get(sha) is None:
                members.put(sha, data_member(content))

    await asyncio.to_thread(compress)
    return len(missing)


def seed_in_background(
    ctx: ServerContext, tenant_id: str, digest: str, members: MemberCache
) -> None:
    async def run() -> None:
        try:
            count = await seed(ctx, tenant_id, digest, members)
            log.debug("kept %d file(s) of %s as blobs", count, digest)
        except Exception:  # best effort: the next deploy sends what is missing
            log.exception("could not keep the files of %s as blobs", digest)

    task = asyncio.create_task(run(), name=f"seed blobs {digest[:19]}")
    _running.add(task)
    task.add_done_callback(_running.discard)

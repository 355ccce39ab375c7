"""Client side of incremental uploads: send only the file contents the server lacks.

``upload_incremental`` asks the server which of the plan's blobs it is missing,
uploads those (a few at a time), then asks it to assemble the artifact from the
plan. If the assembly finds blobs gone (``missing_blobs``: garbage collection ran
in between, or the request reached a server that does not share the blobs) it
asks and uploads once more, then assembles again. When more than ``MANY_BLOBS``
contents are missing (a first deploy), it sends the whole archive instead
(``fallback: "many_blobs"``); the server then keeps the archive's files as blobs,
so the next deploy is incremental. Whenever the incremental path cannot
finish — an older server without blob routes, a server whose tar/zlib produce
other bytes (``digest_mismatch``), blobs still missing, a file that changed after
packing, a plan the server refuses — it falls back to uploading the whole
archive, which always works. Call it only after ``HEAD`` said the
artifact is absent (``ApiClient.has_artifact``).

``known`` (the client's pack cache remembers it between deploys) is the set of
blobs the server was last known to hold: only the others are asked about. It is
a hint, never trusted for correctness: if one of them is gone, the assembly
answers ``missing_blobs`` and the client asks about all of them and sends what
is missing, as above. It is updated in place with what the server holds after.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aether.artifacts.bounded import bounded_map
from aether.artifacts.plan import PackPlan
from aether.errors import BadRequestError, NotFoundError

if TYPE_CHECKING:
    from aether.client import ApiClient

__all__ = ["MANY_BLOBS", "assemble_artifact", "missing_blobs", "upload_blob", "upload_incremental"]

#: Blobs uploaded at once by one client (the server bounds all clients together).
DEFAULT_CONCURRENCY = 8
#: More missing blobs than this and the whole archive is sent instead (``many_blobs``):
#: a first deploy of a tree with ``node_modules`` is one request, not hundreds.
MANY_BLOBS = 100
_BATCH = 50_000
_SMALL = 1 << 20
_CHUNK = 1 << 20


async def missing_blobs(client: ApiClient, digests: list[str]) -> list[str]:
    """The digests (``sha256:<hex>``) the server has no blob for, in the order given."""
    out: list[str] = []
    for start in range(0, len(digests), _BATCH):
        batch = digests[start : start + _BATCH]
        data = await client.json("POST", "/api/v1/blobs/missing", json={"digests": batch})
        out.extend(str(d) for d in data["missing"])
    return out


async def upload_blob(
    client: ApiClient,
    path: Path,
    digest: str,
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """PUT one file's content as the blob ``digest``; the server verifies it."""
    size = path.stat().st_size
    content: bytes | AsyncIterator[bytes]
    if size <= _SMALL:
        content = await asyncio.to_thread(path.read_bytes)
        sent = len(content)
    else:

        async def stream() -> AsyncIterator[bytes]:
            with path.open("rb") as fh:
                while chunk := await asyncio.to_thread(fh.read, _CHUNK):
                    if progress:
                        progress(len(chunk))
                    yield chunk

        content, sent = stream(), 0
    result: dict[str, Any] = await client.json(
        "PUT",
        f"/api/v1/blobs/{digest}",
        content=content,
        headers={"Content-Type": "application/octet-stream"},
    )
    if progress and sent:
        progress(sent)
    return result


async def assemble_artifact(
    client: ApiClient,
    digest: str,
    plan: PackPlan,
    *,
    signature: str | None = None,
    app: str | None = None,
) -> dict[str, Any]:
    """Ask the server to build ``digest`` from ``plan`` and its blobs (same answer as an upload)."""
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Aether-Signature"] = signature
    if app is not None:
        headers["X-Aether-App"] = app
    body = b'{"digest":"' + digest.encode() + b'","plan":' + plan.to_json() + b"}"
    result: dict[str, Any] = await client.json(
        "POST", "/api/v1/artifacts/assemble", content=body, headers=headers
    )
    return result


async def upload_incremental(
    client: ApiClient,
    plan: PackPlan | None,
    root: Path,
    digest: str,
    *,
    archive: Path,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    signature: str | None = None,
    app: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    known: set[str] | None = None,
) -> dict[str, Any]:
    """Make the server hold ``digest``, sending as little as it can.

    ``plan`` and ``root`` describe the tree ``archive`` was packed from (``pack``'s
    ``PackResult.plan``); ``archive`` is the fallback. ``progress(n)`` is called
    with the bytes sent, ``on_total(n)`` once the bytes to send are known.

    Returns the upload answer (``digest, size_bytes, duplicate, verified``) plus
    ``uploaded_bytes`` (everything sent), ``uploaded_files``, ``reused_files``
    (files the server already had) and ``fallback``: null, or the error code that
    made it send the whole archive.
    """
    sent = 0

    def count(n: int) -> None:
        nonlocal sent
        sent += n
        if progress:
            progress(n)

    fallback: str
    if plan is None:
        fallback = "no_plan"
    else:
        try:
            answer = await _incremental(
                client,
                plan,
                Path(root),
                digest,
                count,
                on_total,
                signature,
                app,
                concurrency,
                set() if known is None else known,
            )
            if answer is not None:
                return answer
            fallback = "many_blobs"
        except (BadRequestError, NotFoundError) as exc:
            # NotFoundError: a server without the blob routes
            fallback = exc.code
    if known is not None and plan is not None:
        known.clear()  # the incremental path failed: the next deploy asks about everything
    size = archive.stat().st_size
    if on_total:
        on_total(sent + size)
    answer = await client.upload_artifact(
        archive, digest, progress=count, signature=signature, app=app
    )
    return {
        **answer,
        "uploaded_bytes": sent,
        "uploaded_files": 0,
        "reused_files": 0,
        "fallback": fallback,
    }


async def _incremental(
    client: ApiClient,
    plan: PackPlan,
    root: Path,
    digest: str,
    count: Callable[[int], None],
    on_total: Callable[[int], None] | None,
    signature: str | None,
    app: str | None,
    concurrency: int,
    known: set[str],
) -> dict[str, Any] | None:
    """The upload answer, or None when so much is missing that the whole archive is better."""
    files = list(plan.files())
    source: dict[str, tuple[Path, int]] = {}
    for entry in files:
        source.setdefault("sha256:" + entry.sha256, (root / entry.path, entry.size))
    wanted = plan.blob_digests()
    unknown = [d for d in wanted if d not in known]
    missing = await missing_blobs(client, unknown) if unknown else []
    if len(missing) > MANY_BLOBS:
        # one archive beats hundreds of requests (and the tenant's request rate); the
        # server keeps the archive's files as blobs for the next incremental deploy
        return None
    sent: set[str] = set()
    sent_bytes = 0

    async def send(digests: list[str]) -> None:
        nonlocal sent_bytes
        todo = [(d, *source[d]) for d in digests if d in source]
        if on_total:
            on_total(sent_bytes + sum(size for _, _, size in todo))
        sent_bytes += await _upload_blobs(client, todo, count, concurrency)
        sent.update(d for d, _, _ in todo)

    await send(missing)
    try:
        answer = await assemble_artifact(client, digest, plan, signature=signature, app=app)
    except BadRequestError as exc:
        if exc.code != "missing_blobs":
            raise
        # blobs went away between upload and assembly (garbage collection, or a server
        # behind the same address that does not share them), or ``known`` was wrong:
        # ask about all of them and send what is missing, once
        known.clear()
        await send(await missing_blobs(client, wanted))
        answer = await assemble_artifact(client, digest, plan, signature=signature, app=app)
    known.clear()
    known.update(wanted)
    return {
        **answer,
        "uploaded_bytes": sent_bytes,
        "uploaded_files": sum(1 for e in files if "sha256:" + e.sha256 in sent),
        "reused_files": sum(1 for e in files if "sha256:" + e.sha256 not in sent),
        "fallback": None,
    }


async def _upload_blobs(
    client: ApiClient,
    todo: list[tuple[str, Path, int]],
    count: Callable[[int], None],
    concurrency: int,
) -> int:
    """Upload ``(digest, path, size)`` blobs, ``concurrency`` at a time; the bytes sent."""

    async def send(item: tuple[str, Path, int]) -> int:
        blob_digest, path, size = item
        await upload_blob(client, path, blob_digest, progress=count)
        return size

    return sum(await bounded_map(concurrency, todo, send))

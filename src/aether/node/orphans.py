"""Never delete state silently: a stateful instance's state kept as an ``orphaned`` snapshot.

A node can come back (SIGCONT after its lease expired, a restart after
``kill -9``) holding a stateful instance the server no longer assigns to it
and did not tell it to UNLOAD: the leader replaced it elsewhere, from the
app's newest checkpoint. What the old instance wrote after that checkpoint
exists only here. Before the node removes the directory it stops the
instance (SIGTERM: an app that flushes on it loses nothing), packs the state
directory and stores it on the server as an ``orphaned`` snapshot (``aether
snapshots ls`` shows it; ``aether snapshots restore`` brings it back). State
that packs to a digest this node already stored is on the server already and
is not sent again. When the server cannot take it the directory stays (and
the next start's sweep tries again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path

from aether.artifacts import pack
from aether.client import ApiClient
from aether.errors import AetherError, ForbiddenError, NotFoundError
from aether.node.cleanup import INSTANCE_FILE
from aether.node.trees import remove_tree

__all__ = ["ORPHAN_ARCHIVE", "newest_write", "store_orphan", "store_stale_orphan"]

log = logging.getLogger("aether.node.orphans")

ORPHAN_ARCHIVE = "orphan.tar.gz"
_ATTEMPTS = 5  # uploads tried before the directory is kept for the next start


def newest_write(state_dir: Path) -> float | None:
    """The newest modification time in ``state_dir`` (None: nothing there)."""
    newest: float | None = None
    for dirpath, _, filenames in os.walk(state_dir):
        for name in [*filenames, "."]:
            try:
                mtime = os.lstat(os.path.join(dirpath, name)).st_mtime
            except OSError:
                continue
            newest = mtime if newest is None else max(newest, mtime)
    return newest


async def store_orphan(
    client: ApiClient,
    *,
    key: str,
    state_dir: Path,
    app_dir: Path,
    scratch: Path,
    stored: Collection[str],
    taken_at: float | None,
    stop: Callable[[], Awaitable[object]] | None = None,
) -> bool:
    """Stop the instance, pack its state and store it as orphaned.

    Returns whether its directory may be removed: the state is on the server
    (stored now, or an identical checkpoint before), there is none, or the
    server no longer has the app. False: it could not be stored; keep it.
    """
    if stop is not None:
        await stop()  # SIGTERM first: the app flushes
    if not state_dir.is_dir() or not any(state_dir.iterdir()):
        return True
    if not state_dir.resolve().is_relative_to(app_dir.resolve()):
        log.warning("%s: its state directory leaves the app; kept on disk", key)
        return False
    archive = scratch / ORPHAN_ARCHIVE
    try:
        digest = (await asyncio.to_thread(pack, state_dir, archive)).digest
        if digest in stored:
            log.info("%s: its state is checkpoint %s, stored already", key, digest[:19])
            return True
        return await _upload(client, archive, digest, key, taken_at or time.time())
    except OSError as exc:
        log.warning("%s: its state cannot be packed (%s); kept on disk", key, exc)
        return False
    finally:
        archive.unlink(missing_ok=True)


async def _upload(client: ApiClient, archive: Path, digest: str, key: str, taken: float) -> bool:
    delay = 0.5
    for attempt in range(_ATTEMPTS):
        try:
            await client.upload_snapshot(
                archive, digest, instance=key, kind="orphaned", taken_at=taken
            )
        except NotFoundError as exc:
            log.warning("%s: the server keeps no state of it (%s)", key, exc)
            return True
        except ForbiddenError as exc:
            log.warning("%s: the server refused its state (%s); kept on disk", key, exc)
            return False
        except AetherError as exc:
            if attempt == _ATTEMPTS - 1:
                log.warning("%s: its state could not be stored (%s); kept on disk", key, exc)
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)
            continue
        log.warning(
            "%s: replaced while this node was away; its state is orphaned snapshot %s", key, digest
        )
        return True
    return False


async def store_stale_orphan(client: ApiClient, root: Path, stored: Collection[str]) -> bool:
    """A stale instance directory the start-up sweep kept: store its state, then remove it.

    Its process died with the node; when its state last changed is the newest
    modification time in its state directory.
    """
    try:
        meta = json.loads((root / INSTANCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    state_dir = meta.get("state_dir") if isinstance(meta, dict) else None
    key = meta.get("key") if isinstance(meta, dict) else None
    if not meta.get("stateful") or not isinstance(state_dir, str) or not isinstance(key, str):
        return False
    app_dir = root / "app"
    state = app_dir / state_dir
    taken = await asyncio.to_thread(newest_write, state) if state.is_dir() else None
    if not await store_orphan(
        client,
        key=key,
        state_dir=state,
        app_dir=app_dir,
        scratch=root,
        stored=stored,
        taken_at=taken,
    ):
        return False
    await asyncio.to_thread(remove_tree, root)
    return True

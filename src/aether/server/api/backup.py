"""Backups: a consistent copy of the embedded state store, for `aether backup create`.

The SQLite state store is locked exclusively by the server that owns it, so a
backup taken while it runs asks the server for the copy (SQLite's online backup
API on the server's own connection). Cluster admins only: it is the whole cluster.
On etcd, ``aether backup create`` reads the keys and takes ``etcdctl snapshot
save`` itself, without this route (see docs/production.md).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from aether.errors import ConflictError, ForbiddenError
from aether.server.api.artifacts import BINARY
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Admin
from aether.store import SqliteStateStore
from aether.store.records import DEFAULT_TENANT

__all__ = ["router"]

router = APIRouter(tags=["operations"])
Ctx = Annotated[ServerContext, Depends(get_context)]


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@router.get(
    "/admin/backup/state",
    response_class=FileResponse,
    responses={200: {"content": {"application/vnd.sqlite3": {"schema": BINARY}}}},
)
async def state_copy(caller: Admin, ctx: Ctx) -> FileResponse:
    """The SQLite state store as one consistent SQLite file."""
    if caller.tenant != DEFAULT_TENANT:
        raise ForbiddenError("only an admin of the default tenant can back up the cluster")
    store = ctx.store
    if not isinstance(store, SqliteStateStore):
        raise ConflictError(
            "this server's state store is not the embedded SQLite one: "
            "`aether backup create --config FILE` reads etcd directly"
        )
    fd, name = tempfile.mkstemp(prefix=".backup-state-", suffix=".db", dir=store.path.parent)
    os.close(fd)
    path = Path(name)
    try:
        store.backup(path)  # on the loop thread, like every other store call: no write between
    except BaseException:
        _remove(path)
        raise
    return FileResponse(
        path,
        media_type="application/vnd.sqlite3",
        filename="state.db",
        background=BackgroundTask(_remove, path),
    )

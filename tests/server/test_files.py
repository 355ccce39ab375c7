"""The server's data directory is private: 0700 directories, 0600 files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx

from tests.support.api import bearer, upload_random
from tests.support.server import running_server


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_state_records_wal_logs_and_artifacts_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # an older install, or a careless mkdir
    with running_server(data) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            await upload_random(http, server.admin_token)
            await http.get("/api/v1/apps", headers=bearer(server.admin_token))
        server.run(server.ctx.logs.append("default", "app", "web@n1", "hello\n"))
        created = sorted(p for p in data.rglob("*") if not p.is_symlink())
        assert mode(data) == 0o700
        for name in ("state.db", "records.db", "admin.token", "join.token"):
            assert mode(data / name) == 0o600, name
        wal = [p for p in created if p.name.endswith(("-wal", "-shm"))]
        assert wal, "expected SQLite WAL files while the server runs"
        for path in created:
            # artifacts themselves are 0444, inside 0700 directories
            if path.is_dir() or "sha256" not in path.parts:
                assert mode(path) & 0o077 == 0, f"{path} is {oct(mode(path))}"

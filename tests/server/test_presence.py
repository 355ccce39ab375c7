"""Servers announce themselves in the state store while they run."""

from __future__ import annotations

from pathlib import Path

import httpx

from aether import __version__
from tests.support.api import bearer
from tests.support.server import running_server


def test_status_lists_the_running_server_and_forgets_it_when_it_stops(tmp_path: Path) -> None:
    with running_server(tmp_path / "data") as server:
        status = httpx.get(
            f"{server.base_url}/api/v1/status", headers=bearer(server.token("viewer"))
        ).json()
        assert [(s["url"], s["version"]) for s in status["servers"]] == [
            (server.base_url, __version__)
        ]
    # a clean stop ends the key at once (its lease is revoked): the next start sees none
    with running_server(tmp_path / "data") as again:
        kvs = again.run(again.ctx.store.range("servers/"))[0]
        assert [kv.value for kv in kvs if server.base_url.encode() in kv.value] == []

"""``aether plugins add|ls|rm`` driven as a user does (the real command in a subprocess)
against a real server, with the shipped example plugin."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import run_aether
from tests.support.plugins import example_wasm, importing
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-plugins-cli")) as running:
        yield running


def aether(
    srv: RunningServer, home: Path, *args: str, token: str
) -> subprocess.CompletedProcess[str]:
    return run_aether(home, *args, server=srv.base_url, token=token)


def test_add_ls_and_rm(srv: RunningServer, tmp_path: Path) -> None:
    wasm = tmp_path / "change_freeze.wasm"
    wasm.write_bytes(example_wasm())
    admin = srv.admin_token
    added = aether(
        srv, tmp_path, "plugins", "add", str(wasm), "--name", "freeze", "--kind", "guard",
        "--version", "3", "--deadline-ms", "50", token=admin,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "plugin freeze v3 (guard)"
    listed = aether(srv, tmp_path, "plugins", "ls", "--format", "json", token=admin)
    assert listed.returncode == 0, listed.stderr
    [plugin] = json.loads(listed.stdout)
    assert (plugin["name"], plugin["version"], plugin["deadline_ms"]) == ("freeze", "3", 50)
    table = aether(srv, tmp_path, "plugins", "ls", token=admin).stdout
    assert table.splitlines()[0].split() == ["NAME", "KIND", "VERSION", "SHA256", "BYTES", "LIMITS"]
    assert "freeze" in table and "50 ms" in table

    bad = tmp_path / "wasi.wasm"
    bad.write_bytes(importing())
    refused = aether(
        srv, tmp_path, "plugins", "add", str(bad), "--name", "wasi", "--kind", "risk", token=admin
    )
    assert refused.returncode != 0
    assert "a plugin may import nothing" in refused.stderr

    tenant_admin = srv.new_tenant()
    forbidden = aether(srv, tmp_path, "plugins", "ls", token=tenant_admin)
    assert forbidden.returncode != 0 and "cluster admin" in forbidden.stderr

    removed = aether(srv, tmp_path, "plugins", "rm", "freeze", token=admin)
    assert removed.returncode == 0 and removed.stdout.strip() == "removed plugin freeze"
    assert aether(srv, tmp_path, "plugins", "ls", token=admin).stdout.strip() == "no plugins"

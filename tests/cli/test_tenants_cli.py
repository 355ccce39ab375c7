"""``aether tenants``: a cluster admin creates, lists, reads and deletes tenants."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import bearer, deploy, unique, upload_random
from tests.support.cli import run_aether
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-tenants-cli")) as running:
        yield running


def aether(
    srv: RunningServer, home: Path, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run_aether(home, *args, server=srv.base_url, token=token or srv.admin_token)


def test_create_prints_the_first_admin_token_once(srv: RunningServer, tmp_path: Path) -> None:
    name = unique("team")
    made = aether(srv, tmp_path, "tenants", "create", name, "--display-name", "Team")
    assert made.returncode == 0, made.stderr
    assert f"tenant {name} created" in made.stdout and "shown once" in made.stdout
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("ae_a_")

    own = aether(srv, tmp_path, "tenants", "get", name, "--format", "json", token=token)
    assert own.returncode == 0, own.stderr
    assert json.loads(own.stdout)["display_name"] == "Team"
    assert json.loads(own.stdout)["admin_token"] is None

    listed = aether(srv, tmp_path, "tenants", "ls")
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout and "default" in listed.stdout and "INSTANCES" in listed.stdout
    # a tenant admin is not a cluster admin: it may not list or create tenants
    refused = aether(srv, tmp_path, "tenants", "ls", token=token)
    assert refused.returncode == 42 and "cluster admin" in refused.stderr


def test_create_without_token_and_a_taken_name(srv: RunningServer, tmp_path: Path) -> None:
    name = unique("team")
    made = aether(srv, tmp_path, "tenants", "create", name, "--no-admin-token", "--format", "json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["admin_token"] is None
    again = aether(srv, tmp_path, "tenants", "create", name)
    assert again.returncode == 42 and "already exists" in again.stderr
    bad = aether(srv, tmp_path, "tenants", "create", "Not.A.Name")
    assert bad.returncode == 42 and "name" in bad.stderr


async def test_rm_refuses_a_running_tenant_unless_forced(
    srv: RunningServer, tmp_path: Path
) -> None:
    name = unique("team")
    made = aether(srv, tmp_path, "tenants", "create", name, "--format", "json")
    token = json.loads(made.stdout)["admin_token"]
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as http:
        digest = await upload_random(http, token)
        assert (await deploy(http, token, "shop", digest, instances=2)).status_code == 201

    refused = aether(srv, tmp_path, "tenants", "rm", name)
    assert refused.returncode == 42, refused.stderr
    assert "shop" in refused.stderr and "--force" in refused.stderr

    forced = aether(srv, tmp_path, "tenants", "rm", name, "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"tenant {name} deleted: 1 app(s)" in forced.stdout
    assert "1 token(s) revoked" in forced.stdout

    gone = aether(srv, tmp_path, "tenants", "get", name)
    assert gone.returncode == 41 and "not found" in gone.stderr
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as http:
        assert (await http.get("/api/v1/apps", headers=bearer(token))).status_code == 401


def test_the_default_tenant_stays(srv: RunningServer, tmp_path: Path) -> None:
    result = aether(srv, tmp_path, "tenants", "rm", "default", "--force")
    assert result.returncode == 42 and "cannot be deleted" in result.stderr

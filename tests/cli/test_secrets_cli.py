"""``aether secrets``: a tenant's named secrets, driven as a user does (the real command
in a subprocess) against a real server; the value is sealed and never printed, and
``tenant_secrets`` gives back exactly what each way of setting it sent."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether.server.services.secrets import tenant_secrets
from tests.support.api import unique
from tests.support.cli import run_aether
from tests.support.server import RunningServer, running_server

VALUE = "xoxb-cli-secret-4242"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-secrets-cli")) as running:
        yield running


def aether(
    srv: RunningServer, home: Path, *args: str, token: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run_aether(home, *args, server=srv.base_url, token=token, stdin=stdin)


def _stored(srv: RunningServer, tenant: str, name: str) -> str | None:
    tenant_id = srv.run(srv.ctx.records.tenant_id_of(tenant))
    assert tenant_id is not None
    return srv.run(tenant_secrets(srv.ctx, tenant_id, [name])).get(name)


def test_set_three_ways_ls_and_rm(srv: RunningServer, tmp_path: Path) -> None:
    tenant = unique("team")
    admin = srv.token("admin", tenant)
    piped = aether(srv, tmp_path, "secrets", "set", "SLACK_TOKEN", token=admin, stdin=VALUE + "\n")
    assert piped.returncode == 0, piped.stderr
    assert "secret SLACK_TOKEN set" in piped.stdout and VALUE not in piped.stdout
    assert _stored(srv, tenant, "SLACK_TOKEN") == VALUE  # one trailing newline dropped

    given = aether(srv, tmp_path, "secrets", "set", "api-key", "--value", "v-1", token=admin)
    assert given.returncode == 0, given.stderr
    assert _stored(srv, tenant, "api-key") == "v-1"
    (tmp_path / "key.txt").write_text("from a file\n")
    filed = aether(
        srv, tmp_path, "secrets", "set", "api-key", "--from-file", str(tmp_path / "key.txt"),
        "--format", "json", token=admin,
    )  # fmt: skip
    assert filed.returncode == 0, filed.stderr
    assert set(json.loads(filed.stdout)) == {"name", "created_at", "updated_at", "used_by"}
    assert _stored(srv, tenant, "api-key") == "from a file"

    listed = aether(srv, tmp_path, "secrets", "ls", token=srv.token("viewer", tenant))
    assert listed.returncode == 0, listed.stderr
    assert "SLACK_TOKEN" in listed.stdout and "api-key" in listed.stdout
    assert "NAME" in listed.stdout and VALUE not in listed.stdout
    as_json = aether(srv, tmp_path, "secrets", "ls", "--format", "json", token=admin)
    assert [s["name"] for s in json.loads(as_json.stdout)["secrets"]] == ["SLACK_TOKEN", "api-key"]

    removed = aether(srv, tmp_path, "secrets", "rm", "api-key", "--format", "json", token=admin)
    assert removed.returncode == 0 and json.loads(removed.stdout) == {
        "name": "api-key",
        "deleted": True,
    }
    missing = aether(srv, tmp_path, "secrets", "rm", "api-key", token=admin)
    assert missing.returncode == 41 and "secret 'api-key' not found" in missing.stderr


def test_refusals_and_bad_input(srv: RunningServer, tmp_path: Path) -> None:
    tenant = unique("team")
    viewer = srv.token("viewer", tenant)
    refused = aether(srv, tmp_path, "secrets", "set", "k", "--value", "v", token=viewer)
    assert refused.returncode == 42 and "admin" in refused.stderr.lower()
    admin = srv.token("admin", tenant)
    empty = aether(srv, tmp_path, "secrets", "set", "k", token=admin, stdin="")
    assert empty.returncode == 2 and "stdin gave an empty value" in empty.stderr
    both = aether(
        srv, tmp_path, "secrets", "set", "k", "--value", "v", "--from-file", "f", token=admin
    )
    assert both.returncode == 2 and "one of --value or --from-file" in both.stderr
    nofile = aether(
        srv, tmp_path, "secrets", "set", "k", "--from-file", str(tmp_path / "none"), token=admin
    )
    assert nofile.returncode == 30 and "--from-file" in nofile.stderr
    bad = aether(srv, tmp_path, "secrets", "set", "has space", "--value", "v", token=admin)
    assert bad.returncode == 42 and "invalid request: path.name" in bad.stderr  # a 400

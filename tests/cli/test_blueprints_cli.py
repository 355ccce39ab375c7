"""``aether blueprint apply|ls|get|rm``, driven as a user does (the real command in a
subprocess) against a real server with deployed apps."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aether.model.cluster import Blueprint
from aether.model.names import cluster_name
from tests.support.api import DIGEST_HEADER, bearer, spec_for, unique
from tests.support.cli import run_aether
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-blueprints-cli")) as running:
        yield running


def aether(
    srv: RunningServer, home: Path, *args: str, token: str
) -> subprocess.CompletedProcess[str]:
    return run_aether(home, *args, server=srv.base_url, token=token)


def _deploy(srv: RunningServer, token: str, *apps: str) -> None:
    data = os.urandom(256)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with httpx.Client(base_url=srv.base_url, timeout=30) as http:
        up = http.post(
            "/api/v1/artifacts", content=data, headers={**bearer(token), DIGEST_HEADER: digest}
        )
        assert up.status_code == 201, up.text
        for app in apps:
            made = http.post(
                f"/api/v1/apps/{app}/deployments",
                json={"digest": digest, "spec": spec_for(app), "instances": 1},
                headers=bearer(token),
            )
            assert made.status_code == 201, made.text


def _instances(srv: RunningServer, tenant: str, app: str) -> int:
    kv = srv.run(srv.ctx.store.get(f"blueprints/{cluster_name(app, tenant)}"))
    assert kv is not None
    return Blueprint.model_validate_json(kv.value).instances


def test_apply_ls_get_rm(srv: RunningServer, tmp_path: Path) -> None:
    tenant = unique("team")
    operator = srv.token("operator", tenant)
    catalog, cart = unique("catalog"), unique("cart")
    _deploy(srv, operator, catalog, cart)
    toml = tmp_path / "shop.toml"
    toml.write_text(
        f'name = "shop"\n[apps.{catalog}]\ninstances = 2\n[apps.{cart}]\ninstances = 3\n'
    )
    applied = aether(srv, tmp_path, "blueprint", "apply", str(toml), token=operator)
    assert applied.returncode == 0, applied.stderr
    assert "blueprint shop applied" in applied.stdout and catalog in applied.stdout
    assert (_instances(srv, tenant, catalog), _instances(srv, tenant, cart)) == (2, 3)

    yaml_file = tmp_path / "small.yaml"  # no name inside: the file's stem
    yaml_file.write_text(f"apps:\n  {catalog}:\n    instances: 1\n")
    small = aether(
        srv, tmp_path, "blueprint", "apply", str(yaml_file), "--format", "json", token=operator
    )
    assert small.returncode == 0, small.stderr
    assert json.loads(small.stdout)["name"] == "small"
    assert _instances(srv, tenant, catalog) == 1

    viewer = srv.token("viewer", tenant)
    listed = aether(srv, tmp_path, "blueprint", "ls", token=viewer)
    assert listed.returncode == 0, listed.stderr
    assert "NAME" in listed.stdout and "shop" in listed.stdout and f"{cart}=3" in listed.stdout
    as_json = aether(srv, tmp_path, "blueprint", "ls", "--format", "json", token=viewer)
    assert [b["name"] for b in json.loads(as_json.stdout)["blueprints"]] == ["shop", "small"]
    got = aether(srv, tmp_path, "blueprint", "get", "shop", token=viewer)
    assert got.returncode == 0 and "PINNED" in got.stdout and cart in got.stdout, got.stderr

    forgot = aether(srv, tmp_path, "blueprint", "rm", "small", token=operator)
    assert forgot.returncode == 0 and "blueprint small forgotten" in forgot.stdout
    assert _instances(srv, tenant, catalog) == 1
    zeroed = aether(srv, tmp_path, "blueprint", "rm", "shop", "--scale-to-zero", token=operator)
    assert zeroed.returncode == 0, zeroed.stderr
    assert "scaled to 0" in zeroed.stdout
    assert (_instances(srv, tenant, catalog), _instances(srv, tenant, cart)) == (0, 0)
    again = aether(srv, tmp_path, "blueprint", "get", "shop", token=viewer)
    assert again.returncode == 41 and "blueprint 'shop' not found" in again.stderr


def test_refusals(srv: RunningServer, tmp_path: Path) -> None:
    tenant = unique("team")
    operator = srv.token("operator", tenant)
    app = unique("catalog")
    _deploy(srv, operator, app)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(f"[apps.{app}]\ninstances = 2\n[apps.ghost-app]\ninstances = 1\n")
    refused = aether(srv, tmp_path, "blueprint", "apply", str(unknown), token=operator)
    assert refused.returncode == 42 and "ghost-app" in refused.stderr
    assert _instances(srv, tenant, app) == 1
    bad = tmp_path / "bad.toml"
    bad.write_text("[apps\n")
    broken = aether(srv, tmp_path, "blueprint", "apply", str(bad), token=operator)
    assert broken.returncode == 42 and "not valid TOML" in broken.stderr
    viewer = aether(
        srv, tmp_path, "blueprint", "apply", str(unknown), token=srv.token("viewer", tenant)
    )
    assert viewer.returncode == 42
    missing = aether(
        srv, tmp_path, "blueprint", "apply", str(tmp_path / "none.toml"), token=operator
    )
    assert missing.returncode == 30
    named = tmp_path / "named.toml"
    named.write_text(f'name = "one"\n[apps.{app}]\ninstances = 1\n')
    clash = aether(srv, tmp_path, "blueprint", "apply", str(named), "--name", "two", token=operator)
    assert clash.returncode == 2 and "not --name 'two'" in clash.stderr
    gone = aether(srv, tmp_path, "blueprint", "rm", "nothing", token=operator)
    assert gone.returncode == 41

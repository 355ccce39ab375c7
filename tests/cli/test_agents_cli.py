"""``aether agents``: the tenant's AI agents and the catalog, driven as a user does (the
real command in a subprocess) against a real server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import bearer, unique
from tests.support.cli import run_aether
from tests.support.server import RunningServer, running_server

KEY = "sk-agents-cli-secret-77"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-agents-cli")) as running:
        yield running


def aether(
    srv: RunningServer, home: Path, *args: str, token: str
) -> subprocess.CompletedProcess[str]:
    return run_aether(home, *args, server=srv.base_url, token=token)


def _with_model(srv: RunningServer, tenant: str) -> str:
    """An admin token of ``tenant``, which has the model ``gpt-4o`` (with a key)."""
    token = srv.token("admin", tenant)
    model = {"name": "gpt-4o", "base_url": "http://127.0.0.1:9/v1", "model_id": "gpt-4o"}
    added = httpx.post(
        f"{srv.base_url}/api/v1/models", json={**model, "api_key": KEY}, headers=bearer(token)
    )
    assert added.status_code == 201, added.text
    return token


def test_catalog_create_from_a_recipe_disable_and_versions(
    srv: RunningServer, tmp_path: Path
) -> None:
    tenant = unique("team")
    admin = _with_model(srv, tenant)
    catalog = aether(srv, tmp_path, "agents", "catalog", token=admin)
    assert catalog.returncode == 0, catalog.stderr
    for recipe in ("code-runner", "ops-assistant", "docs-qa"):
        assert recipe in catalog.stdout
    one = aether(
        srv, tmp_path, "agents", "catalog", "ops-assistant", "--format", "json", token=admin
    )
    assert json.loads(one.stdout)["tool_ids"] == ["cluster-status", "apps-list"]

    missing = aether(
        srv, tmp_path, "agents", "create", "coder", "--recipe", "code-runner", token=admin
    )
    assert missing.returncode == 42 and "leaves open: model" in missing.stderr
    made = aether(
        srv, tmp_path, "agents", "create", "coder", "--recipe", "code-runner",
        "--model", "model://gpt-4o", "--format", "json", token=admin,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    agent = json.loads(made.stdout)
    assert agent["status"] == "created" and agent["deployment"] is None
    assert agent["tool_ids"] == ["run-code", "run-command"]

    unknown = aether(
        srv, tmp_path, "agents", "create", "x", "--model", "model://nope", "--format", "json",
        token=admin,
    )  # fmt: skip
    assert unknown.returncode == 41
    error = json.loads(unknown.stdout)["error"]
    assert error["code"] == "invalid_input" and error["message"] == "model not found"
    bad = aether(srv, tmp_path, "agents", "create", "x", "--model", "model://gpt-4o",
                 "--config", "[1]", token=admin)  # fmt: skip
    assert bad.returncode == 2 and "--config is a JSON object" in bad.stderr

    listed = aether(srv, tmp_path, "agents", "ls", token=srv.token("viewer", tenant))
    assert listed.returncode == 0 and agent["id"] in listed.stdout and "coder" in listed.stdout
    disabled = aether(srv, tmp_path, "agents", "disable", agent["id"], token=admin)
    assert disabled.returncode == 0 and "is disabled" in disabled.stdout
    got = aether(srv, tmp_path, "agents", "get", agent["id"], "--format", "json", token=admin)
    assert json.loads(got.stdout)["status"] == "disabled"
    enabled = aether(srv, tmp_path, "agents", "enable", agent["id"], token=admin)
    assert enabled.returncode == 0 and "is created" in enabled.stdout
    versions = aether(srv, tmp_path, "agents", "versions", agent["id"], "--format", "json",
                      token=admin)  # fmt: skip
    assert [v["version"] for v in json.loads(versions.stdout)["versions"]] == [1]
    other = aether(srv, tmp_path, "agents", "get", agent["id"], token=srv.token("admin"))
    assert other.returncode == 41 and "not found" in other.stderr


def test_export_then_import_into_another_tenant(srv: RunningServer, tmp_path: Path) -> None:
    admin = _with_model(srv, unique("team"))
    made = aether(
        srv, tmp_path, "agents", "create", "helper", "--model", "model://gpt-4o",
        "--tool", "search", "--policy", "default-safe", "--system-prompt", "Be brief.",
        "--config", '{"max_tokens": 256}', "--format", "json", token=admin,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    agent = json.loads(made.stdout)
    file = tmp_path / "helper.agent.json"
    exported = aether(srv, tmp_path, "agents", "export", agent["id"], "-o", str(file), token=admin)
    assert exported.returncode == 0, exported.stderr
    text = file.read_text()
    assert KEY not in text and json.loads(text)["system_prompt"] == "Be brief."

    other = _with_model(srv, unique("team"))
    imported = aether(srv, tmp_path, "agents", "import", str(file), "--format", "json", token=other)
    assert imported.returncode == 0, imported.stderr
    copy = json.loads(imported.stdout)
    assert copy["name"] == "helper" and copy["id"] != agent["id"]
    assert copy["config"] == {"max_tokens": 256} and copy["tool_ids"] == ["search"]
    again = aether(srv, tmp_path, "agents", "import", str(file), token=other)
    assert again.returncode != 0 and "already exists" in again.stderr


def test_deploy_and_undeploy(srv: RunningServer, tmp_path: Path) -> None:
    tenant = unique("team")
    admin = _with_model(srv, tenant)
    made = aether(
        srv, tmp_path, "agents", "create", "helper", "--model", "model://gpt-4o", token=admin
    )
    assert made.returncode == 0, made.stderr
    deployed = aether(
        srv,
        tmp_path,
        "agents",
        "deploy",
        "helper",
        "--replicas",
        "2",
        "--format",
        "json",
        token=admin,
    )
    assert deployed.returncode == 0, deployed.stderr
    agent = json.loads(deployed.stdout)
    assert agent["status"] == "deployed" and agent["name"] == "helper"
    assert agent["deployment"]["replicas"] == 2 and agent["deployment"]["version"] == 1
    text = aether(srv, tmp_path, "agents", "deploy", agent["id"], "--version", "1", token=admin)
    assert text.returncode == 0, text.stderr
    assert "agent helper" in text.stdout and "deployed: version 1, 1 replica(s)" in text.stdout
    listed = aether(srv, tmp_path, "agents", "ls", "--status", "deployed", token=admin)
    assert listed.returncode == 0 and "helper" in listed.stdout and "/1" in listed.stdout

    for bad in (["--replicas", "0"], ["--replicas", "65"], ["--version", "0"]):
        refused = aether(srv, tmp_path, "agents", "deploy", "helper", *bad, token=admin)
        assert refused.returncode == 2 and bad[0] in refused.stderr, refused.stderr
    missing = aether(srv, tmp_path, "agents", "deploy", "helper", "--version", "9", token=admin)
    assert missing.returncode == 42 and "no version 9" in missing.stderr
    unknown = aether(srv, tmp_path, "agents", "deploy", "nobody", token=admin)
    assert unknown.returncode == 41 and "not found" in unknown.stderr

    undeployed = aether(srv, tmp_path, "agents", "undeploy", "helper", token=admin)
    assert undeployed.returncode == 0 and "not deployed" in undeployed.stdout
    assert aether(srv, tmp_path, "agents", "disable", "helper", token=admin).returncode == 0
    disabled = aether(srv, tmp_path, "agents", "deploy", "helper", "--format", "json", token=admin)
    assert disabled.returncode == 42
    assert json.loads(disabled.stdout)["error"]["code"] == "agent_disabled"

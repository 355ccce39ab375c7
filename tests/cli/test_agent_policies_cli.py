"""``aether tools`` and ``aether policies``, as a person runs them against a real server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.api import unique
from tests.support.cli import run_aether
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("aether-policies-cli")
    with running_server(data, agent_tools_sync=True) as running:
        yield running


def aether(
    srv: RunningServer, home: Path, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run_aether(home, *args, server=srv.base_url, token=token or srv.admin_token)


TOOL = """
id: weather
kind: http
description: Current weather for a city
parameters:
  type: object
  properties: {city: {type: string}}
  required: [city]
config: {url: "https://weather.example.com/{city}"}
"""

SYNCED = """
- id: lookup
  kind: app
  description: Look an order up in the shop
  config: {app: shop, path: /orders}
"""

POLICY = """
id: ops
description: cluster reads, and commands from a short list
tools: [cluster-status, run-command]
constraints:
  - {tool: run-command, arg: command, allow: [ls, cat]}
max_steps: 10
"""


def test_tools_ls_add_get_search_sync_rm(srv: RunningServer, tmp_path: Path) -> None:
    token = srv.mint("admin", unique("cli"))
    (tmp_path / "tool.yaml").write_text(TOOL)
    (tmp_path / "sync.yaml").write_text(SYNCED)
    listed = aether(srv, tmp_path, "tools", "ls", token=token)
    assert listed.returncode == 0, listed.stderr
    assert "search" in listed.stdout and "built-in" in listed.stdout and "KIND" in listed.stdout

    search = aether(srv, tmp_path, "tools", "get", "search", "--format", "json", token=token)
    assert search.returncode == 0 and json.loads(search.stdout)["kind"] == "memory", search.stderr

    added = aether(srv, tmp_path, "tools", "add", str(tmp_path / "tool.yaml"), token=token)
    assert added.returncode == 0 and "tool weather added" in added.stdout, added.stderr
    got = aether(srv, tmp_path, "tools", "get", "weather", "--format", "json", token=token)
    assert json.loads(got.stdout)["config"]["url"] == "https://weather.example.com/{city}"
    found = aether(srv, tmp_path, "tools", "search", "weather", "--format", "json", token=token)
    assert [t["id"] for t in json.loads(found.stdout)] == ["weather"]
    synced = aether(srv, tmp_path, "tools", "sync", str(tmp_path / "sync.yaml"), token=token)
    assert synced.returncode == 0 and "1 added, 0 updated: lookup" in synced.stdout, synced.stderr

    builtin = aether(srv, tmp_path, "tools", "rm", "search", token=token)
    assert builtin.returncode == 42 and "built in" in builtin.stderr
    removed = aether(srv, tmp_path, "tools", "rm", "weather", token=token)
    assert removed.returncode == 0 and "tool weather deleted" in removed.stdout
    missing = aether(srv, tmp_path, "tools", "get", "weather", token=token)
    assert missing.returncode == 41 and "tool 'weather' not found" in missing.stderr
    unreadable = aether(srv, tmp_path, "tools", "add", str(tmp_path / "nope.yaml"), token=token)
    assert unreadable.returncode == 30 and "cannot read" in unreadable.stderr


def test_policies_create_set_evaluate_rm(srv: RunningServer, tmp_path: Path) -> None:
    token = srv.mint("admin", unique("cli"))
    (tmp_path / "ops.yaml").write_text(POLICY)
    (tmp_path / "tighter.yaml").write_text("max_steps: 3\n")
    created = aether(srv, tmp_path, "policies", "create", str(tmp_path / "ops.yaml"), token=token)
    assert created.returncode == 0 and "policy ops created (version 1)" in created.stdout

    changed = aether(
        srv, tmp_path, "policies", "set", "ops", str(tmp_path / "tighter.yaml"), token=token
    )
    assert changed.returncode == 0 and "policy ops is now version 2" in changed.stdout
    shown = aether(srv, tmp_path, "policies", "get", "ops", token=token)
    assert "max_steps: 3" in shown.stdout and "# as Cedar:" in shown.stdout
    listed = aether(srv, tmp_path, "policies", "ls", token=token)
    assert "default-safe" in listed.stdout and "ops" in listed.stdout

    def evaluate(*extra: str) -> subprocess.CompletedProcess[str]:
        return aether(srv, tmp_path, "policies", "evaluate", "ops", *extra, token=token)

    ok = evaluate("--tool", "run-command", "--args", '{"command": "ls -la"}')
    assert ok.returncode == 0 and ok.stdout.startswith("allowed (policy version 2"), ok.stderr
    no = evaluate("--tool", "run-command", "--args", '{"command": "rm -rf /"}', "--format", "json")
    answer = json.loads(no.stdout)
    assert answer["decision"] == "deny"
    assert answer["reasons"] == ["argument 'command' of 'run-command' must run one of: ls, cat"]
    spent = evaluate("--tool", "cluster-status", "--agent", "agt_9")
    assert spent.returncode == 0 and spent.stdout.startswith("allowed"), spent.stderr
    bad = evaluate("--tool", "run-command", "--args", "not json")
    assert bad.returncode == 2 and "--args is not JSON" in bad.stderr
    invalid = evaluate("--tool", "run-command", "--args", "{}")
    assert invalid.returncode == 42 and "'command' is a required property" in invalid.stderr

    fixed = aether(srv, tmp_path, "policies", "rm", "default-safe", token=token)
    assert fixed.returncode == 42 and "built in" in fixed.stderr
    gone = aether(srv, tmp_path, "policies", "rm", "ops", token=token)
    assert gone.returncode == 0 and "policy ops deleted" in gone.stdout


def test_policies_simulate_shows_what_a_changed_policy_would_decide(
    srv: RunningServer, tmp_path: Path
) -> None:
    tenant = unique("cli-sim")
    token = srv.mint("admin", tenant)
    (tmp_path / "open.yaml").write_text("id: ops\ntools: [run-command]\n")
    created = aether(srv, tmp_path, "policies", "create", str(tmp_path / "open.yaml"), token=token)
    assert created.returncode == 0, created.stderr
    for command in ("ls -la", "rm -rf /"):
        args = json.dumps({"command": command})
        done = aether(
            srv,
            tmp_path,
            "policies",
            "evaluate",
            "ops",
            "--tool",
            "run-command",
            "--args",
            args,
            token=token,
        )
        assert done.returncode == 0 and done.stdout.startswith("allowed"), done.stderr
    (tmp_path / "changed.yaml").write_text(POLICY.replace("cluster-status, ", ""))

    def simulate(*extra: str, token: str = token) -> subprocess.CompletedProcess[str]:
        return aether(srv, tmp_path, "policies", "simulate", "ops", *extra, token=token)

    shown = simulate("--file", str(tmp_path / "changed.yaml"))
    assert shown.returncode == 0, shown.stderr
    first, *table = shown.stdout.splitlines()
    assert first == (
        "policy ops: 2 calls replayed, 1 changed; would allow 1, deny 1, need approval 0"
    )
    assert "ENFORCEMENT" in table[0] and "WHY" in table[0]
    assert len(table) == 2 and "user:" in table[1] and "run-command" in table[1]
    assert "allow -> deny" in table[1] and "must run one of: ls, cat" in table[1]

    answer = json.loads(
        simulate("--file", str(tmp_path / "changed.yaml"), "--format", "json").stdout
    )
    assert answer["changed"] == 1 and answer["calls"][0]["new"] == "deny"
    newest = json.loads(
        simulate(
            "--file", str(tmp_path / "changed.yaml"), "--limit", "1", "--format", "json"
        ).stdout
    )
    assert newest["replayed"] == 1 and newest["calls"][0]["old"] == "allow"
    same = simulate("--file", str(tmp_path / "open.yaml"))
    assert same.returncode == 0 and same.stdout.endswith("no decision would change\n")

    (tmp_path / "bad.yaml").write_text("tools: run-command\n")
    bad = simulate("--file", str(tmp_path / "bad.yaml"))
    assert bad.returncode == 42 and "invalid policy: tools" in bad.stderr
    other = simulate("--file", str(tmp_path / "open.yaml"), token=srv.new_tenant())
    assert other.returncode == 41 and "policy 'ops' not found" in other.stderr
    viewer = simulate("--file", str(tmp_path / "open.yaml"), token=srv.mint("viewer", tenant))
    assert viewer.returncode == 42 and "operator" in viewer.stderr, viewer.stderr
    missing = simulate("--file", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 30 and "cannot read" in missing.stderr

"""``aether run`` and ``aether runs``: agents' runs driven as a user does (the real
command in a subprocess) against a real server, a node's task worker and the scripted
model server."""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.agent_node import agent_worker
from tests.support.api import bearer, unique
from tests.support.cli import run_aether
from tests.support.mcp_stdio import command as mcp_command
from tests.support.model_server import ModelServer, call, call_tools, model_server, say
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-runs-cli")) as running:
        yield running


@pytest.fixture
def llm() -> Iterator[ModelServer]:
    with model_server() as server:
        yield server


def aether(
    srv: RunningServer, home: Path, *args: str, token: str
) -> subprocess.CompletedProcess[str]:
    return run_aether(home, *args, server=srv.base_url, token=token)


def _agent(srv: RunningServer, llm: ModelServer, tenant: str) -> str:
    admin = {"Authorization": bearer(srv.mint("admin", tenant))["Authorization"]}
    with httpx.Client(base_url=srv.base_url, headers=admin, timeout=10) as http:
        model = {"name": "m", "base_url": llm.url, "model_id": "test-model"}
        assert http.post("/api/v1/models", json=model).status_code == 201
        policy = {"id": "ask-first", "tools": ["search"], "approval_required": ["search"]}
        assert http.post("/api/v1/policies", json=policy).status_code == 201
        body = {
            "name": "helper",
            "model": "model://m",
            "policy_ids": ["ask-first"],
            "tool_ids": ["search"],
        }
        made = http.post("/api/v1/agents", json=body)
        assert made.status_code == 201, made.text
        return str(made.json()["id"])


def test_run_follow_approve_get_ls_cancel(
    srv: RunningServer, llm: ModelServer, tmp_path: Path
) -> None:
    tenant = unique("runs-cli")
    agent_id = _agent(srv, llm, tenant)
    operator = srv.token("operator", tenant)
    llm.script(say("Hello there"), call_tools(call("search", query="notes")), say("all done"))
    with agent_worker(srv.base_url, srv.node_token("cli-n1"), "cli-n1", tmp_path, agent_id):
        plain = aether(srv, tmp_path, "run", "helper", "hi", token=operator)
        assert plain.returncode == 0, plain.stderr
        assert "Hello there" in plain.stdout and "completed" in plain.stdout
        followed = aether(srv, tmp_path, "run", "helper", "look it up", "--follow", token=operator)
        assert followed.returncode == 4, (followed.stdout, followed.stderr)  # waits for a person
        assert "[started on cli-n1]" in followed.stdout
        assert (
            "waiting for approval" in followed.stdout and "aether runs approve" in followed.stdout
        )
        listed = aether(srv, tmp_path, "runs", "ls", "--format", "json", token=operator)
        runs = json.loads(listed.stdout)["runs"]
        waiting = runs[0]
        assert waiting["status"] == "requires_approval" and runs[1]["status"] == "completed"
        approved = aether(srv, tmp_path, "runs", "approve", waiting["id"], token=operator)
        assert approved.returncode == 0 and "approved" in approved.stdout, approved.stderr
        for _ in range(100):
            got = aether(
                srv, tmp_path, "runs", "get", waiting["id"], "--format", "json", token=operator
            )
            if json.loads(got.stdout)["status"] == "completed":
                break
        detail = json.loads(got.stdout)
        assert detail["output"] == "all done"
        assert [s["kind"] for s in detail["steps"]] == ["model", "tool", "model"]
        shown = aether(srv, tmp_path, "runs", "get", waiting["id"], token=operator)
        assert "all done" in shown.stdout and "search" in shown.stdout
    # no node drives this one: it stays queued until cancelled
    queued = aether(srv, tmp_path, "run", "helper", "later", "--wait", "0", token=operator)
    assert queued.returncode == 0 and "queued" in queued.stdout, queued.stderr
    assert "still under way" in queued.stdout
    run_id = queued.stdout.split()[1]
    cancelled = aether(srv, tmp_path, "runs", "cancel", run_id, token=operator)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    viewer = srv.token("viewer", tenant)
    refused = aether(srv, tmp_path, "run", "helper", "x", token=viewer)
    assert refused.returncode != 0 and "operator" in refused.stderr
    unknown = aether(srv, tmp_path, "runs", "get", "run_nope", token=operator)
    assert unknown.returncode != 0 and "not found" in unknown.stderr


def test_tools_discover_a_stdio_mcp_server(srv: RunningServer, tmp_path: Path) -> None:
    tenant = unique("mcp-cli")
    admin = srv.token("admin", tenant)
    line = shlex.join(mcp_command())
    with agent_worker(srv.base_url, srv.node_token("cli-n2"), "cli-n2", tmp_path):
        listed = aether(srv, tmp_path, "tools", "discover", "--command", line, token=admin)
        assert listed.returncode == 0, listed.stderr
        assert "add" in listed.stdout and "fail" in listed.stdout
        added = aether(
            srv, tmp_path, "tools", "discover", "--command", line, "--add", "--format", "json",
            token=admin,
        )  # fmt: skip
        assert json.loads(added.stdout)["registered"] == ["add", "fail"]
    neither = aether(srv, tmp_path, "tools", "discover", token=admin)
    assert neither.returncode != 0 and "--url" in neither.stderr

"""Issue 17's acceptance, with real processes: a server and two nodes (``aether server``,
``aether node``), the scripted OpenAI-compatible model server and a real HTTP endpoint
for an ``http`` tool, everything driven through the ``aether`` command as a user does.

An agent made from a recipe and one made from flags are deployed on both nodes; runs
call a sandbox tool (after a person's approval) and an http tool, a tool the policy
does not allow is denied with its enforcement record, a token budget stops a run, a
node killed with SIGKILL mid-run leaves the run to the other node (each tool call
executed once), a run is cancelled, another tenant reads nothing, and an unknown
model, policy or tool is 404 ``invalid_input``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.cluster import Cluster
from tests.support.model_server import call, call_tools, model_server, say
from tests.support.tool_server import tool_server
from tests.support.waiting import wait_for


def _api(
    cluster: Cluster, method: str, path: str, token: str | None = None, **kw: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token or cluster.admin_token}"}
    return httpx.request(method, f"{cluster.api}/api/v1{path}", headers=headers, timeout=30, **kw)


def _run_detail(cluster: Cluster, run_id: str) -> dict[str, Any]:
    got = _api(cluster, "GET", f"/runs/{run_id}")
    assert got.status_code == 200, got.text
    data: dict[str, Any] = got.json()
    return data


def _settled(cluster: Cluster, run_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
    wait_for(
        lambda: _run_detail(cluster, run_id)["status"] == status, timeout, f"run {run_id} {status}"
    )
    return _run_detail(cluster, run_id)


def _write(root: Path, name: str, data: dict[str, Any]) -> str:
    path = root / name
    path.write_text(json.dumps(data))
    return str(path)


def test_agents_end_to_end(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")
    with model_server() as llm, tool_server() as api:
        # -- the catalog: a model, an http tool, a policy -------------------------------
        cluster.cli("models", "add", "m", "--base-url", llm.url, "--model-id", "test-model")
        tool = {
            "id": "lookup",
            "kind": "http",
            "description": "look a thing up",
            "parameters": {"type": "object", "properties": {"thing": {"type": "string"}}},
            "config": {"method": "POST", "url": api.url + "/things/{thing}"},
        }
        cluster.cli("tools", "add", _write(tmp_path, "lookup.json", tool))
        policy = {
            "id": "net",
            "tools": ["lookup", "run-code"],
            "egress_hosts": ["127.0.0.1"],
            "max_steps": 20,
        }
        cluster.cli("policies", "create", _write(tmp_path, "net.json", policy))
        tight = {"id": "tight", "tools": ["lookup"], "token_budgets": {"per_run": 500}}
        cluster.cli("policies", "create", _write(tmp_path, "tight.json", tight))

        # 404 invalid_input for an unknown model, policy or tool
        for body, message in (
            ({"name": "x", "model": "model://nope"}, "model not found"),
            ({"name": "x", "model": "model://m", "policy_ids": ["nope"]}, "policy not found"),
            ({"name": "x", "model": "model://m", "tool_ids": ["nope"]}, "tool not found"),
        ):
            refused = _api(cluster, "POST", "/agents", json=body)
            assert refused.status_code == 404, refused.text
            assert refused.json()["code"] == "invalid_input"
            assert refused.json()["message"] == message

        # -- agents: one from a recipe, one from flags; deployed on both nodes ----------
        coder = cluster.cli_json(
            "agents", "create", "coder", "--recipe", "code-runner", "--model", "model://m"
        )
        fetcher = cluster.cli_json(
            "agents", "create", "fetcher", "--model", "model://m", "--tool", "lookup",
            "--tool", "run-code", "--tool", "cluster-status", "--policy", "net",
        )  # fmt: skip
        spender = cluster.cli_json(
            "agents", "create", "spender", "--model", "model://m", "--tool", "lookup",
            "--policy", "tight",
        )  # fmt: skip
        for agent in (coder, fetcher, spender):
            cluster.cli("agents", "deploy", agent["name"], "--replicas", "2")
            wait_for(_on_both(cluster, str(agent["id"])), 30, f"{agent['name']} on n1 and n2")

        # -- a sandbox tool, after a person's approval (default-safe asks) --------------
        llm.script(call_tools(call("run-code", code="print(6 * 7)")), say("It is 42."))
        waiting = cluster.cli("run", "coder", "what is 6 times 7?", check=False)
        assert waiting.returncode == 4, (waiting.stdout, waiting.stderr)
        assert "waiting for approval" in waiting.stdout
        run_id = waiting.stdout.split()[1]
        cluster.cli("runs", "approve", run_id)
        done = _settled(cluster, run_id, "completed")
        assert done["output"] == "It is 42."
        sandbox_step = done["steps"][1]
        assert sandbox_step["decision"] == "approval" and sandbox_step["approved_by"]
        assert sandbox_step["content"].strip() == "42"

        # -- an http tool, a sandbox tool, and a denied one with its enforcement ----------
        llm.script(
            call_tools(call("lookup", thing="disk")),
            call_tools(call("run-code", code="print('ok')")),
            call_tools(call("cluster-status")),
            say("Looked it up."),
        )
        followed = cluster.cli("run", "fetcher", "check the disk", "--follow")
        assert "[completed]" in followed.stdout, followed.stdout
        runs = cluster.cli_json("runs", "ls", "--agent", "fetcher")["runs"]
        detail = _run_detail(cluster, runs[0]["id"])
        tools = [s for s in detail["steps"] if s["kind"] == "tool"]
        assert [(s["tool_id"], s["status"]) for s in tools] == [
            ("lookup", "completed"),
            ("run-code", "completed"),
            ("cluster-status", "denied"),
        ]
        assert [r.path for r in api.requests] == ["/things/disk"]
        assert api.requests[0].headers["idempotency-key"] == tools[0]["idempotency_key"]
        enforcements = _api(cluster, "GET", "/policy-enforcements").json()
        rows = enforcements["enforcements"] if isinstance(enforcements, dict) else enforcements
        [denial] = [r for r in rows if r["run_id"] == detail["id"] and r["decision"] == "deny"]
        assert denial["tool_id"] == "cluster-status" and denial["step"] == tools[2]["seq"]
        assert denial["audit_event_id"] is not None

        # -- a token budget exhausted mid-run ---------------------------------------------
        llm.script(call_tools(call("lookup", thing="a"), usage=(400, 200)))
        spent = cluster.cli("run", "spender", "spend", check=False)
        assert spent.returncode == 1 and "budget" in spent.stdout, spent.stdout
        spent_run = cluster.cli_json("runs", "ls", "--agent", "spender")["runs"][0]
        assert spent_run["stop_reason"] == "budget"

        # -- kill -9 the node driving a run: the other node finishes it -----------------
        before = len(api.requests)
        llm.script(
            call_tools(call("lookup", thing="once")),
            say("slow answer", delay=8),
            say("Finished elsewhere."),
        )
        made = _api(
            cluster,
            "POST",
            f"/agents/{fetcher['id']}/runs",
            json={"input": "go", "background": True},
        ).json()
        wait_for(
            lambda: len(llm.chats) >= 1 and _model_calls(llm) >= 2, 60, "the second model call"
        )
        driver = _run_detail(cluster, made["id"])["node"]
        assert driver in ("n1", "n2")
        cluster.kill_node(driver)
        finished = _settled(cluster, made["id"], "completed", timeout=90)
        survivor = "n2" if driver == "n1" else "n1"
        assert finished["node"] == survivor
        assert [r.path for r in api.requests[before:]] == ["/things/once"]  # executed once

        # -- cancel -------------------------------------------------------------------------
        llm.reset()  # the killed node's call may have left a scripted answer unused
        llm.script(say("never", delay=30))
        slow = _api(
            cluster,
            "POST",
            f"/agents/{fetcher['id']}/runs",
            json={"input": "wait", "background": True},
        ).json()
        wait_for(lambda: _run_detail(cluster, slow["id"])["status"] == "running", 30, "running")
        cancelled = cluster.cli_json("runs", "cancel", slow["id"])
        assert cancelled["status"] == "cancelled"

        # -- another tenant reads nothing ---------------------------------------------------
        other = cluster.cli_json("tenants", "create", "rival")
        token = other.get("admin_token") or other["token"]
        for path in (f"/runs/{run_id}", f"/agents/{coder['id']}/runs", f"/agents/{coder['id']}"):
            assert _api(cluster, "GET", path, token=token).status_code == 404
        assert _api(cluster, "GET", "/runs", token=token).json()["runs"] == []
        assert time.time() > 0


def _placed(cluster: Cluster, agent_id: str) -> list[str]:
    deployment = _api(cluster, "GET", f"/agents/{agent_id}").json()["deployment"] or {}
    return sorted(deployment.get("nodes", []))


def _on_both(cluster: Cluster, agent_id: str) -> Callable[[], bool]:
    return lambda: _placed(cluster, agent_id) == ["n1", "n2"]


def _model_calls(llm: Any) -> int:
    return len(llm.chats)

"""Runs of agents over HTTP (issue 17), on a real in-process server, a real node task
worker (claiming the agent's queue, running sandbox tools in bwrap) and the scripted
OpenAI-compatible model server.

Steps, tool decisions with their enforcement records, approvals, budgets, cancel, the
event stream and its resume, threads, and another tenant's runs answering 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aether.server.services.gc import collect_garbage
from tests.support.agent_node import agent_worker
from tests.support.api import assert_envelope, bearer, unique
from tests.support.mcp_stdio import command as mcp_command
from tests.support.model_server import ModelServer, call, call_tools, model_server, say
from tests.support.server import RunningServer, running_server
from tests.support.tool_server import tool_server
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("runs")) as s:
        yield s


@pytest.fixture(scope="module")
def llm() -> Iterator[ModelServer]:
    with model_server() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_script(llm: ModelServer) -> None:
    """Each test scripts its own turns (one that ended mid-run may leave some)."""
    llm.reset()


@pytest.fixture
async def http(srv: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=30.0) as client:
        yield client


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


class Agent:
    def __init__(self, tenant: str, headers: dict[str, str], agent: dict[str, Any]) -> None:
        self.tenant = tenant
        self.headers = headers
        self.id = agent["id"]
        self.name = agent["name"]


async def _agent(
    srv: RunningServer,
    http: httpx.AsyncClient,
    llm: ModelServer,
    *,
    tools: list[str],
    policy: dict[str, Any] | None = None,
    prices: tuple[float, float] = (0.0, 0.0),
) -> Agent:
    """A fresh tenant with a model at the scripted server, maybe a policy, and an agent."""
    tenant = unique("runs")
    admin = bearer(srv.mint("admin", tenant))
    return await _agent_of(srv, http, llm, tenant, admin, tools, policy, prices)


async def _agent_of(
    srv: RunningServer,
    http: httpx.AsyncClient,
    llm: ModelServer,
    tenant: str,
    admin: dict[str, str],
    tools: list[str],
    policy: dict[str, Any] | None = None,
    prices: tuple[float, float] = (0.0, 0.0),
) -> Agent:
    model = {
        "name": "m",
        "base_url": llm.url,
        "model_id": "test-model",
        "price_in_per_1k": prices[0],
        "price_out_per_1k": prices[1],
    }
    _ok(await http.post("/api/v1/models", json=model, headers=admin), 201)
    policy_ids = ["default-safe"]
    if policy is not None:
        _ok(await http.post("/api/v1/policies", json=policy, headers=admin), 201)
        policy_ids = [policy["id"]]
    body = {"name": "helper", "model": "model://m", "policy_ids": policy_ids, "tool_ids": tools}
    made = _ok(await http.post("/api/v1/agents", json=body, headers=admin), 201)
    return Agent(tenant, admin, made)


@contextlib.asynccontextmanager
async def node(
    srv: RunningServer, tmp: Path, agent: Agent, name: str = "n1"
) -> AsyncIterator[None]:
    """A node's task worker claiming the agent's queue (and the default one, for the
    sandbox tools)."""
    with agent_worker(srv.base_url, srv.node_token(name), name, tmp, agent.id):
        yield


async def _run(http: httpx.AsyncClient, agent: Agent, text: str, **extra: Any) -> Any:
    body = {"input": text, "wait": 30, **extra}
    response = await http.post(f"/api/v1/agents/{agent.id}/runs", json=body, headers=agent.headers)
    assert response.status_code in (200, 202), response.text
    return response.json()


async def _detail(http: httpx.AsyncClient, agent: Agent, run_id: str) -> Any:
    return _ok(await http.get(f"/api/v1/runs/{run_id}", headers=agent.headers))


async def test_a_run_asks_the_model_and_completes_with_its_answer(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    agent = await _agent(srv, http, llm, tools=[], prices=(1.0, 2.0))
    llm.script(say("Hello from the model", usage=(100, 50)))
    async with node(srv, tmp_path, agent):
        run = await _run(http, agent, "hi")
    assert run["status"] == "completed", run
    assert run["output"] == "Hello from the model" and run["stop_reason"] == "completed"
    assert run["tokens_in"] == 100 and run["tokens_out"] == 50
    assert run["cost"] == pytest.approx(0.1 + 0.1)  # 100/1k * 1.0 + 50/1k * 2.0
    assert run["node"] == "n1" and run["agent"] == "helper" and run["step_count"] == 1
    detail = await _detail(http, agent, run["id"])
    [step] = detail["steps"]
    assert step["kind"] == "model" and step["status"] == "completed"
    assert step["content"] == "Hello from the model" and step["duration_ms"] >= 0
    assert llm.chats[-1]["messages"][-1] == {"role": "user", "content": "hi"}


async def test_a_tool_call_is_decided_run_on_the_server_and_fed_back(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    agent = await _agent(srv, http, llm, tools=["search", "memory-write"])
    # memory-write is not in default-safe: denied; search is allowed
    llm.script(
        call_tools(call("memory-write", text="secret plan")),
        call_tools(call("search", query="aether")),
        say("done"),
    )
    async with node(srv, tmp_path, agent):
        run = await _run(http, agent, "remember")
    assert run["status"] == "completed" and run["output"] == "done"
    steps = (await _detail(http, agent, run["id"]))["steps"]
    assert [(s["kind"], s["status"]) for s in steps] == [
        ("model", "completed"),
        ("tool", "denied"),
        ("model", "completed"),
        ("tool", "completed"),
        ("model", "completed"),
    ]
    denied, allowed = steps[1], steps[3]
    assert denied["decision"] == "deny" and denied["tool_id"] == "memory-write"
    assert "not among the tools" in denied["content"]
    assert allowed["decision"] == "allow" and json.loads(allowed["content"]) == {"results": []}
    call_id = steps[2]["tool_calls"][0]["id"]
    assert allowed["idempotency_key"] == f"{run['id']}:{steps[2]['seq']}:{call_id}"
    # the model was told what happened to each call
    tool_messages = [m for m in llm.chats[-1]["messages"] if m["role"] == "tool"]
    assert "the policy denied this call" in tool_messages[0]["content"]
    # every decision is an enforcement, linked to its run step and its audit event
    found = _ok(await http.get("/api/v1/policy-enforcements", headers=agent.headers))
    rows = found["enforcements"] if isinstance(found, dict) else found
    [row] = [r for r in rows if r["run_id"] == run["id"] and r["tool_id"] == "memory-write"]
    assert row["step"] == denied["seq"] and row["decision"] == "deny"
    assert denied["enforcement_ids"] == [row["id"]]


async def test_an_approval_round_trip_and_a_rejection(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    policy = {
        "id": "careful",
        "tools": ["search"],
        "approval_required": ["search"],
    }
    agent = await _agent(srv, http, llm, tools=["search"], policy=policy)
    llm.script(
        call_tools(call("search", query="one")),
        call_tools(call("search", query="two")),
        say("finished"),
    )
    async with node(srv, tmp_path, agent):
        run = await _run(http, agent, "look")
        assert run["status"] == "requires_approval", run
        pending = run["pending_approval"]
        assert pending["tool_id"] == "search" and pending["arguments"] == {"query": "one"}
        viewer = bearer(srv.mint("viewer", agent.tenant))
        refused = await http.post(
            f"/api/v1/runs/{run['id']}/approvals", json={"decision": "approve"}, headers=viewer
        )
        assert_envelope(refused, 403, "forbidden")
        step = _ok(
            await http.post(
                f"/api/v1/runs/{run['id']}/approvals",
                json={"decision": "approve"},
                headers=agent.headers,
            )
        )
        assert step["status"] == "approved" and step["approved_by"] and step["decided_at"]

        async def second_pending() -> Any:
            got = await _detail(http, agent, run["id"])
            pending = got["pending_approval"]
            return pending is not None and pending["arguments"] == {"query": "two"}

        await eventually(second_pending, "the second call to wait for approval", timeout=20)
        _ok(
            await http.post(
                f"/api/v1/runs/{run['id']}/approvals",
                json={"decision": "reject", "reason": "not that"},
                headers=agent.headers,
            )
        )

        async def finished() -> Any:
            got = await _detail(http, agent, run["id"])
            return got if got["status"] == "completed" else None

        done = await eventually(finished, "the run to complete", timeout=20)
    statuses = [s["status"] for s in done["steps"] if s["kind"] == "tool"]
    assert statuses == ["completed", "rejected"]
    again = await http.post(
        f"/api/v1/runs/{run['id']}/approvals", json={"decision": "approve"}, headers=agent.headers
    )
    assert_envelope(again, 409, "no_pending_approval")


async def test_a_token_budget_stops_the_run_mid_way(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    policy = {"id": "tight", "tools": ["search"], "token_budgets": {"per_run": 500}}
    agent = await _agent(srv, http, llm, tools=["search"], policy=policy)
    llm.script(call_tools(call("search", query="x"), usage=(400, 200)))
    async with node(srv, tmp_path, agent):
        run = await _run(http, agent, "spend")
    assert run["status"] == "failed" and run["stop_reason"] == "budget", run
    assert "600 used" in run["error"]
    steps = (await _detail(http, agent, run["id"]))["steps"]
    assert [s["kind"] for s in steps] == ["model", "tool"]  # no second model call


async def test_a_sandbox_tool_runs_in_a_sandbox_task_once(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    policy = {"id": "coder", "tools": ["run-code"]}
    agent = await _agent(srv, http, llm, tools=["run-code"], policy=policy)
    llm.script(call_tools(call("run-code", code="print(6 * 7)")), say("it is 42"))
    async with node(srv, tmp_path, agent):
        run = await _run(http, agent, "compute")
    assert run["status"] == "completed", run
    steps = (await _detail(http, agent, run["id"]))["steps"]
    tool = steps[1]
    assert tool["status"] == "completed" and tool["content"].strip() == "42"
    task = _ok(await http.get(f"/api/v1/tasks/{tool['task_id']}", headers=agent.headers))
    assert task["type"] == "agent:sandbox" and task["attempts"] == 1
    assert task["idempotency_key"] == tool["idempotency_key"]


async def test_cancel_stops_a_run_and_the_stream_resumes_after_last_event_id(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    agent = await _agent(srv, http, llm, tools=[])
    llm.script(say("slow", delay=5))
    asked = len(llm.chats)
    async with node(srv, tmp_path, agent):
        run = await _run(http, agent, "wait", background=True)
        assert run["status"] == "queued"

        await eventually(lambda: len(llm.chats) > asked, "the model to be asked", timeout=20)
        cancelled = _ok(await http.post(f"/api/v1/runs/{run['id']}/cancel", headers=agent.headers))
        assert cancelled["status"] == "cancelled" and cancelled["stop_reason"] == "cancelled"
    events = await _events(http, agent, run["id"])
    assert [e["type"] for e in events] == [
        "run.queued",
        "run.started",
        "step.started",
        "run.cancelled",
    ]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert all(e["at"].endswith("+00:00") for e in events)
    resumed = await _events(http, agent, run["id"], last_event_id="2")
    assert [e["seq"] for e in resumed] == [3, 4]
    await asyncio.sleep(5)  # the model answers after all: nothing is added to a cancelled run
    assert (await _detail(http, agent, run["id"]))["steps"] == []


async def _events(
    http: httpx.AsyncClient, agent: Agent, run_id: str, last_event_id: str | None = None
) -> list[dict[str, Any]]:
    headers = dict(agent.headers)
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    out: list[dict[str, Any]] = []
    async with http.stream("GET", f"/api/v1/runs/{run_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
    return out


async def test_a_streamed_run_sends_its_text_as_it_comes(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    agent = await _agent(srv, http, llm, tools=[])
    llm.script(say("one two three four five six seven eight", chunk_delay=0.06))
    async with node(srv, tmp_path, agent):
        body = {"input": "count", "stream": True}
        seen: list[dict[str, Any]] = []
        async with http.stream(
            "POST", f"/api/v1/agents/{agent.id}/runs", json=body, headers=agent.headers
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
    kinds = [e["type"] for e in seen]
    assert kinds[0] == "run.queued" and kinds[-1] == "run.completed"
    deltas = [e["text"] for e in seen if e["type"] == "delta"]
    assert len(deltas) >= 2 and "".join(deltas) == "one two three four five six seven eight"
    assert seen[-1]["output"] == "one two three four five six seven eight"


async def test_threads_keep_history_and_a_busy_thread_refuses_a_second_run(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    agent = await _agent(srv, http, llm, tools=[])
    llm.script(say("first answer"), say("slow", delay=3), say("third"))
    async with node(srv, tmp_path, agent):
        first = await _run(http, agent, "first question", thread_id="t1")
        assert first["thread_id"] == "t1" and first["status"] == "completed"
        second = await _run(http, agent, "second", thread_id="t1", background=True)
        busy = await http.post(
            f"/api/v1/agents/{agent.id}/runs",
            json={"input": "third", "thread_id": "t1"},
            headers=agent.headers,
        )
        assert_envelope(busy, 409, "thread_busy")
        third = await _run(http, agent, "third", thread_id="t1", concurrency="enqueue")
        assert third["status"] == "completed", third
    sent = llm.chats[-2]["messages"]  # the second run's call saw the first turn
    assert {"role": "user", "content": "first question"} in sent
    assert {"role": "assistant", "content": "first answer"} in sent
    listed = _ok(await http.get("/api/v1/threads/t1/runs", headers=agent.headers))
    assert [r["id"] for r in listed["runs"]] == [third["id"], second["id"], first["id"]]


async def test_a_disabled_agent_refuses_new_runs(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer
) -> None:
    agent = await _agent(srv, http, llm, tools=[])
    _ok(await http.post(f"/api/v1/agents/{agent.id}/disable", headers=agent.headers))
    refused = await http.post(
        f"/api/v1/agents/{agent.id}/runs", json={"input": "x"}, headers=agent.headers
    )
    assert_envelope(refused, 409, "agent_disabled")


async def test_another_tenant_s_runs_are_404_and_roles_are_checked(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    agent = await _agent(srv, http, llm, tools=[])
    llm.script(say("mine"))
    async with node(srv, tmp_path, agent):
        run = await _run(http, agent, "x", thread_id="private")
    other = bearer(srv.mint("admin", unique("other")))
    for path in (
        f"/api/v1/runs/{run['id']}",
        f"/api/v1/runs/{run['id']}/events",
        f"/api/v1/agents/{agent.id}/runs",
        "/api/v1/threads/private/runs",
    ):
        assert_envelope(await http.get(path, headers=other), 404, "not_found")
    for path, body in (
        (f"/api/v1/runs/{run['id']}/cancel", None),
        (f"/api/v1/runs/{run['id']}/approvals", {"decision": "approve"}),
        (f"/api/v1/agents/{agent.id}/runs", {"input": "x"}),
    ):
        assert_envelope(await http.post(path, json=body, headers=other), 404, "not_found")
    # the other tenant cannot write into this thread either
    other_agent = await _agent(srv, http, llm, tools=[])
    taken = await http.post(
        f"/api/v1/agents/{other_agent.id}/runs",
        json={"input": "x", "thread_id": "private"},
        headers=other_agent.headers,
    )
    assert_envelope(taken, 404, "not_found")
    viewer = bearer(srv.mint("viewer", agent.tenant))
    assert_envelope(
        await http.post(f"/api/v1/agents/{agent.id}/runs", json={"input": "x"}, headers=viewer),
        403,
        "forbidden",
    )
    listed = _ok(await http.get(f"/api/runs?agent={agent.name}", headers=viewer))  # the alias
    assert [r["id"] for r in listed["runs"]] == [run["id"]]
    # a tenant's admin is not a node: the runtime routes refuse it
    drive = await http.post(
        f"/api/v1/agent-runtime/runs/{run['id']}/next",
        json={"node": "n1", "task_id": "x"},
        headers=agent.headers,
    )
    assert drive.status_code == 403


async def test_bad_input_gets_the_envelope(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer
) -> None:
    agent = await _agent(srv, http, llm, tools=[])
    for body in (
        {},
        {"input": ""},
        {"input": "x", "concurrency": "sometimes"},
        {"input": "x", "extra": 1},
    ):
        bad = await http.post(f"/api/v1/agents/{agent.id}/runs", json=body, headers=agent.headers)
        assert_envelope(bad, 400, "bad_request")
    assert_envelope(
        await http.get("/api/v1/runs?status=sleeping", headers=agent.headers), 400, "bad_request"
    )
    assert_envelope(
        await http.get(
            "/api/v1/runs/run_nope/events", headers={**agent.headers, "Last-Event-ID": "x"}
        ),
        404,
        "not_found",
    )


async def test_a_run_no_node_starts_expires(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer
) -> None:
    agent = await _agent(srv, http, llm, tools=[])
    run = await _run(http, agent, "nobody drives me", background=True)
    early = srv.run(collect_garbage(srv.ctx, now=time.time() + 60))
    assert early.expired_runs == 0
    later = srv.run(collect_garbage(srv.ctx, now=time.time() + 3700))
    assert later.expired_runs >= 1
    got = await _detail(http, agent, run["id"])
    assert got["status"] == "expired" and got["stop_reason"] == "expired"
    assert "no node started it" in got["error"]
    task = _ok(await http.get(f"/api/v1/tasks/{got['task_id']}", headers=agent.headers))
    assert task["state"] == "cancelled"


async def test_runs_do_not_hold_a_node_s_sandbox_slots(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    """A node with one sandbox slot drives several runs at once: a run waits on the
    network, not on a sandbox."""
    agent = await _agent(srv, http, llm, tools=[])
    llm.script(*(say(f"answer {n}", delay=4) for n in range(3)))
    with agent_worker(srv.base_url, srv.node_token("n1"), "n1", tmp_path, agent.id, concurrency=1):
        made = [await _run(http, agent, f"q{n}", background=True) for n in range(3)]

        async def all_running() -> bool:
            got = [await _detail(http, agent, r["id"]) for r in made]
            return all(g["status"] == "running" for g in got)

        await eventually(all_running, "three runs in flight on a one-slot node", timeout=3.5)


async def test_an_http_tool_runs_on_the_node_with_its_secret_and_idempotency_key(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    with tool_server() as api:
        tenant = unique("runs")
        admin = bearer(srv.mint("admin", tenant))
        secret = "tok-" + unique("s")
        put = await http.put("/api/v1/secrets/api-token", json={"value": secret}, headers=admin)
        assert put.status_code in (200, 201), put.text
        tool = {
            "id": "lookup",
            "kind": "http",
            "description": "look a thing up",
            "parameters": {"type": "object", "properties": {"thing": {"type": "string"}}},
            "config": {
                "method": "POST",
                "url": api.url + "/things/{thing}",
                "headers": {"Authorization": "api-token"},
            },
        }
        _ok(await http.post("/api/v1/tools", json=tool, headers=admin), 201)
        policy = {
            "id": "net",
            "tools": ["lookup"],
            "egress_hosts": ["127.0.0.1"],
            "redact": ["api-token"],
        }
        agent = await _agent_of(srv, http, llm, tenant, admin, ["lookup"], policy)
        llm.script(call_tools(call("lookup", thing="a b")), say("looked"))
        async with node(srv, tmp_path, agent):
            run = await _run(http, agent, "find it")
        assert run["status"] == "completed", run
        [seen] = api.requests  # executed once
        tool_step = (await _detail(http, agent, run["id"]))["steps"][1]
        assert seen.path == "/things/a%20b" and seen.method == "POST"
        assert seen.headers["authorization"] == secret
        assert seen.headers["idempotency-key"] == tool_step["idempotency_key"]
        assert tool_step["status"] == "completed" and tool_step["node"] == "n1"
        assert secret not in tool_step["content"]  # the echo of the header is redacted
        assert "/things/a%20b" in tool_step["content"]
        # a host the policy does not list is denied before anything is sent
        llm.script(call_tools(call("lookup", thing="x")), say("no"))
        _ok(
            await http.patch(
                "/api/v1/policies/net", json={"egress_hosts": ["example.com"]}, headers=admin
            )
        )
        async with node(srv, tmp_path, agent):
            denied = await _run(http, agent, "again")
        steps = (await _detail(http, agent, denied["id"]))["steps"]
        assert steps[1]["status"] == "denied" and "host" in steps[1]["content"]
        assert len(api.requests) == 1


async def test_a_deployed_agent_runs_the_version_its_deploy_pinned(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    agent = await _agent(srv, http, llm, tools=[])
    _ok(
        await http.patch(
            f"/api/v1/agents/{agent.id}",
            json={"system_prompt": "Be version two."},
            headers=agent.headers,
        )
    )
    _ok(
        await http.post(
            f"/api/v1/agents/{agent.id}/deploy",
            json={"replicas": 1, "version": 1},
            headers=agent.headers,
        )
    )
    _ok(
        await http.patch(
            f"/api/v1/agents/{agent.id}",
            json={"system_prompt": "Be version three."},
            headers=agent.headers,
        )
    )
    llm.script(say("pinned"))
    async with node(srv, tmp_path, agent):
        run = await _run(http, agent, "which version?")
    assert run["status"] == "completed" and run["agent_version"] == 1
    assert llm.chats[-1]["messages"][0] == {"role": "user", "content": "which version?"}


async def test_an_agent_s_figures_on_metrics_its_route_and_the_live_stream(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    agent = await _agent(srv, http, llm, tools=["search"], prices=(1.0, 1.0))
    llm.script(call_tools(call("search", query="x"), usage=(10, 5)), say("ok", usage=(20, 5)))
    async with node(srv, tmp_path, agent):
        run = await _run(http, agent, "measure")
        assert run["status"] == "completed"
        figures = _ok(await http.get(f"/api/v1/agents/{agent.name}/metrics", headers=agent.headers))
        assert figures["runs_per_second"] > 0 and figures["steps_per_second"] > 0
        assert figures["tokens_per_second"] == pytest.approx(40 / 10)
        assert figures["step_latency_p50_ms"] > 0
        mine = _series((await http.get("/metrics", headers=agent.headers)).text, agent.tenant)
        assert mine[("agent_runs_started_total", ())] == 1
        assert mine[("agent_runs_finished_total", (("status", "completed"),))] == 1
        assert mine[("agent_tokens_total", (("direction", "in"),))] == 30
        assert mine[("agent_tokens_total", (("direction", "out"),))] == 10
        assert mine[("agent_cost_total", ())] == pytest.approx(0.04)
        assert mine[("agent_step_duration_seconds_count", (("kind", "model"),))] == 2
        other = bearer(srv.mint("admin", unique("other")))
        assert _series((await http.get("/metrics", headers=other)).text, agent.tenant) == {}
        llm.script(*(call_tools(call("search", query=f"q{n}")) for n in range(30)), say("done"))
        await _run(http, agent, "keep busy", background=True)
        seen = await _agents_event(http, agent)
    assert "helper" in seen and seen["helper"]["steps_per_second"] > 0


async def _agents_event(http: httpx.AsyncClient, agent: Agent) -> dict[str, Any]:
    async with http.stream("GET", "/api/v1/metrics/stream", headers=agent.headers) as response:
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "agents":
                found: dict[str, Any] = json.loads(line[6:])
                return found
    raise AssertionError("no agents event")


def _series(text: str, tenant: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The agent samples of ``tenant`` in a scrape: (name, other labels) -> value."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            if sample.name.startswith("agent_") and labels.pop("tenant", None) == tenant:
                labels.pop("agent", None)
                found[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return found


async def test_files_a_sandbox_tool_writes_under_out_are_kept_and_links_are_not(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    policy = {"id": "coder", "tools": ["run-code"]}
    agent = await _agent(srv, http, llm, tools=["run-code"], policy=policy)
    code = (
        "import os\n"
        "os.makedirs('out/sub', exist_ok=True)\n"
        "open('out/report.txt', 'w').write('the answer is 42')\n"
        "open('out/sub/data.csv', 'w').write('a,b\\n1,2\\n')\n"
        "os.symlink('/etc/passwd', 'out/passwd')\n"
        "print('wrote')"
    )
    llm.script(call_tools(call("run-code", code=code)), say("see the files"))
    async with node(srv, tmp_path, agent):
        run = await _run(http, agent, "write files")
    assert run["status"] == "completed", run
    step = (await _detail(http, agent, run["id"]))["steps"][1]
    assert "kept files: report.txt (16 bytes), sub/data.csv (8 bytes)" in step["content"]
    files = _ok(await http.get(f"/api/v1/runs/{run['id']}/files", headers=agent.headers))
    assert [(f["step"], f["name"], f["size"]) for f in files] == [
        (step["seq"], "report.txt", 16),
        (step["seq"], "sub/data.csv", 8),
    ]
    got = await http.get(
        f"/api/v1/runs/{run['id']}/files/{step['seq']}/sub/data.csv", headers=agent.headers
    )
    assert got.status_code == 200 and got.content == b"a,b\n1,2\n"
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-disposition"] == 'attachment; filename="data.csv"'
    missing = await http.get(
        f"/api/v1/runs/{run['id']}/files/{step['seq']}/passwd", headers=agent.headers
    )
    assert_envelope(missing, 404, "not_found")
    other = bearer(srv.mint("admin", unique("other")))
    assert_envelope(
        await http.get(f"/api/v1/runs/{run['id']}/files", headers=other), 404, "not_found"
    )


async def test_a_sandbox_tool_in_a_named_sandbox_and_a_quoted_template(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    tenant = unique("runs")
    admin = bearer(srv.mint("admin", tenant))
    async with node(srv, tmp_path, Agent(tenant, admin, {"id": "agt_none", "name": "x"})):
        made = _ok(
            await http.post(
                "/api/v1/tasks",
                json={"type": "vm:create", "payload": {"name": "box"}},
                headers=admin,
            ),
            201,
        )

        async def created() -> str | None:
            task = _ok(await http.get(f"/api/v1/tasks/{made['id']}", headers=admin))
            return task["result"]["vm_id"] if task["state"] == "succeeded" else None

        vm_id = await eventually(created, "the sandbox to be created", timeout=30)
    tool = {
        "id": "echo-in-box",
        "kind": "sandbox",
        "description": "echo a word in the shared box",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
        "config": {
            "mode": "command",
            "command": "echo {word} > note && cat note",
            "sandbox": vm_id,
        },
    }
    _ok(await http.post("/api/v1/tools", json=tool, headers=admin), 201)
    policy = {"id": "box", "tools": ["echo-in-box"]}
    agent = await _agent_of(srv, http, llm, tenant, admin, ["echo-in-box"], policy)
    llm.script(call_tools(call("echo-in-box", word="hi; touch pwned")), say("echoed"))
    async with node(srv, tmp_path, agent):
        run = await _run(http, agent, "echo")
    assert run["status"] == "completed", run
    step = (await _detail(http, agent, run["id"]))["steps"][1]
    assert step["content"].strip() == "hi; touch pwned"  # one word: nothing ran after it
    task = _ok(await http.get(f"/api/v1/tasks/{step['task_id']}", headers=admin))
    assert task["type"] == "vm:execute" and task["node"] == "n1"
    executions = _ok(await http.get(f"/api/v1/sandboxes/{vm_id}/executions", headers=admin))
    assert len(executions) == 1


async def test_aether_actions_go_through_the_api_as_the_run_s_tenant(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    """An ops agent's actions are Management API calls with a token made for the call:
    the API's own checks apply (a tenant's agent may not drain a shared node), the token
    is revoked after, and the audit log names the run."""
    policy = {"id": "ops", "tools": ["scale", "drain", "cluster-status"]}
    agent = await _agent(srv, http, llm, tools=["scale", "drain", "cluster-status"], policy=policy)
    llm.script(
        call_tools(call("cluster-status")),
        call_tools(call("scale", app="ghost", instances=2)),
        call_tools(call("drain", node="n1")),
        say("reported"),
    )
    async with node(srv, tmp_path, agent):
        run = await _run(http, agent, "tidy up")
    assert run["status"] == "completed", run
    tools = [s for s in (await _detail(http, agent, run["id"]))["steps"] if s["kind"] == "tool"]
    status, scale, drain = tools
    assert status["status"] == "completed" and "nodes" in json.loads(status["content"])
    assert scale["status"] == "failed" and "answered 404" in scale["content"]
    assert drain["status"] == "failed" and "answered 403" in drain["content"]
    tokens = _ok(await http.get("/api/v1/tokens", headers=agent.headers))
    made = [t for t in tokens if t["name"] == f"agent run {run['id']}"]
    assert len(made) == 2 and all(t["revoked_at"] for t in made)
    audit = _ok(await http.get("/api/v1/audit", params={"limit": 50}, headers=agent.headers))
    events = audit["events"] if isinstance(audit, dict) else audit
    assert any("/scale" in e["action"] and e["outcome"] != "ok" for e in events)


async def test_a_node_that_claims_the_task_before_the_server_recorded_it_drives_the_run(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer
) -> None:
    """The task is submitted before its id is stored on the run: a fast node may ask
    first. It takes the run; a task that is not the run's is refused."""
    agent = await _agent(srv, http, llm, tools=[])
    run = await _run(http, agent, "race", background=True)
    srv.run(srv.ctx.records.set_run(run["id"], task_id=None))
    node_auth = bearer(srv.node_token("racer"))
    llm.script(say("won", delay=1))
    url = f"/api/v1/agent-runtime/runs/{run['id']}/next"

    async def other_task() -> httpx.Response:
        await asyncio.sleep(0.3)  # while the first node's call waits on the model
        return await http.post(url, json={"node": "racer", "task_id": "t-other"}, headers=node_auth)

    first, second = await asyncio.gather(
        http.post(url, json={"node": "racer", "task_id": "t-first"}, headers=node_auth),
        other_task(),
    )
    assert first.status_code == 200 and first.json() == {**first.json(), "action": "done"}
    assert_envelope(second, 409, "conflict")
    got = await _detail(http, agent, run["id"])
    assert got["status"] == "completed" and got["task_id"] == "t-first"


async def test_a_stdio_mcp_server_runs_in_a_sandbox_for_each_call(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    tenant = unique("runs")
    admin = bearer(srv.mint("admin", tenant))
    for name in ("add", "fail"):
        tool = {
            "id": f"mcp-{name}",
            "kind": "mcp",
            "description": name,
            "parameters": {"type": "object"},
            "config": {"command": mcp_command(), "tool": name},
        }
        _ok(await http.post("/api/v1/tools", json=tool, headers=admin), 201)
    policy = {"id": "mcp", "tools": ["mcp-add", "mcp-fail"]}
    agent = await _agent_of(srv, http, llm, tenant, admin, ["mcp-add", "mcp-fail"], policy)
    llm.script(call_tools(call("mcp-add", a=2, b=3)), call_tools(call("mcp-fail")), say("five"))
    async with node(srv, tmp_path, agent):
        run = await _run(http, agent, "add")
    assert run["status"] == "completed", run
    added, failed = [
        s for s in (await _detail(http, agent, run["id"]))["steps"] if s["kind"] == "tool"
    ]
    assert added["status"] == "completed" and added["content"] == "5"
    task = _ok(await http.get(f"/api/v1/tasks/{added['task_id']}", headers=admin))
    assert task["type"] == "agent:sandbox" and task["idempotency_key"] == added["idempotency_key"]
    assert failed["status"] == "failed" and failed["content"] == "it failed"


async def test_an_mcp_server_s_tools_are_discovered_and_registered(
    srv: RunningServer, http: httpx.AsyncClient, llm: ModelServer, tmp_path: Path
) -> None:
    tenant = unique("runs")
    admin = bearer(srv.mint("admin", tenant))
    body = {"command": mcp_command(), "register": True}
    async with node(srv, tmp_path, Agent(tenant, admin, {"id": "agt_none", "name": "x"})):
        found = _ok(await http.post("/api/v1/tools/mcp/discover", json=body, headers=admin))
        assert [t["id"] for t in found["tools"]] == ["add", "fail"]
        assert found["registered"] == ["add", "fail"] and found["existing"] == []
        again = _ok(await http.post("/api/v1/tools/mcp/discover", json=body, headers=admin))
        assert again["registered"] == [] and again["existing"] == ["add", "fail"]
        not_mcp = {"command": ["python3", "-c", "print('hello')"]}
        failed = await http.post("/api/v1/tools/mcp/discover", json=not_mcp, headers=admin)
        assert_envelope(failed, 502, "mcp_failed")
    tool = _ok(await http.get("/api/v1/tools/add", headers=admin))
    assert tool["kind"] == "mcp" and tool["config"]["tool"] == "add"
    assert tool["config"]["command"] == mcp_command()
    assert tool["parameters"]["required"] == ["a", "b"]
    operator = bearer(srv.mint("operator", tenant))
    assert_envelope(
        await http.post("/api/v1/tools/mcp/discover", json=body, headers=operator), 403, "forbidden"
    )
    for bad in ({}, {"url": "ftp://x.example/mcp"}, {"url": "http://a.example", "command": ["x"]}):
        refused = await http.post("/api/v1/tools/mcp/discover", json=bad, headers=admin)
        assert_envelope(refused, 400, "bad_request")

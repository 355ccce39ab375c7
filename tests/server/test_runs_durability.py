"""A run outlives the node driving it (issue 17): the node stops mid-run, its task's
lease runs out, another node claims the run's task and continues from the last
completed step; the sandbox tool that had finished is not executed again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.agent_node import agent_worker
from tests.support.api import bearer, unique
from tests.support.model_server import ModelServer, call, call_tools, model_server, say
from tests.support.server import RunningServer, running_server
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("durable"), task_lease=3.0) as s:
        yield s


async def test_a_second_node_finishes_a_run_whose_node_stopped(
    srv: RunningServer, tmp_path: Path
) -> None:
    tenant = unique("durable")
    admin = bearer(srv.mint("admin", tenant))
    with model_server() as llm:
        async with httpx.AsyncClient(base_url=srv.base_url, headers=admin, timeout=30) as http:
            await _setup(http, llm)
            agent = (await http.get("/api/v1/agents")).json()["agents"][0]["id"]
            llm.script(
                call_tools(call("run-code", code="print('ran')")),
                say("slow answer", delay=6),  # the first node stops while waiting for this
                say("the answer"),
            )
            with agent_worker(srv.base_url, srv.node_token("d1"), "d1", tmp_path, agent):
                made = await http.post(
                    f"/api/v1/agents/{agent}/runs", json={"input": "go", "background": True}
                )
                run_id = made.json()["id"]

                async def second_model_call() -> bool:
                    return len(llm.chats) >= 2

                await eventually(second_model_call, "the second model call", timeout=30)
            # d1 is gone (its heartbeats stopped); d2 takes the run over
            with agent_worker(srv.base_url, srv.node_token("d2"), "d2", tmp_path, agent):

                async def completed() -> dict[str, Any] | None:
                    got: dict[str, Any] = (await http.get(f"/api/v1/runs/{run_id}")).json()
                    return got if got["status"] == "completed" else None

                run = await eventually(completed, "the run to complete on d2", timeout=60)
            assert run["node"] == "d2"
            steps = run["steps"]
            tools = [s for s in steps if s["kind"] == "tool"]
            assert len(tools) == 1 and tools[0]["node"] == "d1" and "ran" in tools[0]["content"]
            sandbox_tasks = (
                await http.get("/api/v1/tasks", params={"type": "agent:sandbox"})
            ).json()
            listed = sandbox_tasks["tasks"] if isinstance(sandbox_tasks, dict) else sandbox_tasks
            assert len([t for t in listed if t["type"] == "agent:sandbox"]) == 1
            events = [e for e in await _events(http, run_id) if e["type"] == "run.resumed"]
            assert events and events[0]["node"] == "d2" and events[0]["after"] == "d1"


async def _setup(http: httpx.AsyncClient, llm: ModelServer) -> None:
    model = {"name": "m", "base_url": llm.url, "model_id": "test-model"}
    assert (await http.post("/api/v1/models", json=model)).status_code == 201
    policy = {"id": "coder", "tools": ["run-code"]}
    assert (await http.post("/api/v1/policies", json=policy)).status_code == 201
    body = {
        "name": "coder",
        "model": "model://m",
        "policy_ids": ["coder"],
        "tool_ids": ["run-code"],
    }
    assert (await http.post("/api/v1/agents", json=body)).status_code == 201


async def _events(http: httpx.AsyncClient, run_id: str) -> list[dict[str, object]]:
    out = []
    async with http.stream("GET", f"/api/v1/runs/{run_id}/events") as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
    return out

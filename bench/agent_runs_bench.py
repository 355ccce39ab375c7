"""Agent runs: the platform's cost per step, runs in flight on one node, and the time to
first token the platform adds when streaming (issue 17's benchmarks).

    .venv/bin/python -m bench.agent_runs_bench [--runs 20] [--concurrent 200] [--ttft 20]

Real processes, as a user runs them: ``aether server`` (embedded SQLite) and one
``aether node`` with the agent deployed on it; the scripted OpenAI-compatible model
server and the benchmark's client in this process. They talk over loopback HTTP. The
model answers at once (zero delay).

- **overhead per step**: one run of 10 model steps (the model calls the ``search``
  memory tool 9 times, then answers), driven by the node through the server — each
  step a policy decision (Cedar, kept as an enforcement with its audit event), a
  memory search, the step and its events written, the model called by the server —
  against the **floor**: the same 10-call loop written directly against the model
  server with httpx (same messages, same streaming, no tools run). Added per step =
  (run's wall time - floor's) / 10. Goal: < 5 ms p50.
- **concurrent runs**: ``--concurrent`` runs submitted at once (background), one model
  step each, all on one node: runs/s until the last finished, and each run's latency
  (created → finished), p50 and p95.
- **time to first token**: a streamed run (``"stream": true``) from the POST until its
  first ``delta`` event, against the floor: a streamed chat request straight to the
  model server until its first content chunk. Goal: < 20 ms p50 added.

Results: bench/results/agent_runs.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import percentile, summary, write_result
from tests.support.cluster import Cluster
from tests.support.model_server import Turn, call, call_tools, model_server, say

RESULT_NAME = "agent_runs"
STEPS = 10


def _ten_steps(body: dict[str, Any]) -> Turn:
    """Call ``search`` until 9 results came back, then answer (10 model steps)."""
    done = sum(1 for m in body["messages"] if m.get("role") == "tool")
    if done < STEPS - 1:
        return call_tools(call("search", query=f"step {done}"))
    return say("done")


async def _setup(http: httpx.AsyncClient, url: str) -> str:
    model = {"name": "m", "base_url": url, "model_id": "test-model"}
    (await http.post("/api/v1/models", json=model)).raise_for_status()
    policy = {"id": "bench", "tools": ["search"], "max_steps": 100, "max_tool_calls": 100}
    (await http.post("/api/v1/policies", json=policy)).raise_for_status()
    body = {"name": "bench", "model": "model://m", "policy_ids": ["bench"], "tool_ids": ["search"]}
    made = await http.post("/api/v1/agents", json=body)
    made.raise_for_status()
    return str(made.json()["id"])


async def _floor_loop(url: str) -> float:
    """The 10 calls straight to the model server: (seconds)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    tools = [
        {
            "type": "function",
            "function": {"name": "search", "description": "s", "parameters": {"type": "object"}},
        }
    ]
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(STEPS):
            body = {"model": "test-model", "messages": messages, "tools": tools, "stream": True}
            calls: list[dict[str, Any]] = []
            text = ""
            async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    delta = json.loads(line[6:])["choices"]
                    if delta:
                        text += delta[0]["delta"].get("content") or ""
                        calls.extend(delta[0]["delta"].get("tool_calls") or [])
            if not calls:
                break
            call_id = calls[0]["id"]
            messages.append({"role": "assistant", "content": text, "tool_calls": calls[:1]})
            messages.append({"role": "tool", "tool_call_id": call_id, "content": '{"results": []}'})
    return time.perf_counter() - started


async def _overhead(http: httpx.AsyncClient, agent: str, url: str, runs: int) -> dict[str, Any]:
    aether: list[float] = []
    floor: list[float] = []
    for n in range(runs):  # interleaved, so both see the same machine
        if n % 2 == 0:
            floor.append(await _floor_loop(url))
        started = time.perf_counter()
        made = await http.post(f"/api/v1/agents/{agent}/runs", json={"input": "go", "wait": 60})
        run = made.json()
        aether.append(time.perf_counter() - started)
        assert run["status"] == "completed" and run["step_count"] == 2 * STEPS - 1, run
        if n % 2 == 1:
            floor.append(await _floor_loop(url))
    added = [(a - f) / STEPS * 1000 for a, f in zip(sorted(aether), sorted(floor), strict=False)]
    return {
        "run_seconds": summary(aether),
        "floor_seconds": summary(floor),
        "added_ms_per_step_p50": round(
            (percentile(aether, 50) - percentile(floor, 50)) / STEPS * 1000, 2
        ),
        "added_ms_per_step_p95": round(
            (percentile(aether, 95) - percentile(floor, 95)) / STEPS * 1000, 2
        ),
        "added_ms_per_step_pairs": [round(a, 2) for a in added],
        "goal_ms_p50": 5.0,
    }


async def _concurrent(http: httpx.AsyncClient, agent: str, count: int) -> dict[str, Any]:
    started = time.perf_counter()
    made = await asyncio.gather(
        *(
            http.post(f"/api/v1/agents/{agent}/runs", json={"input": "hi", "background": True})
            for _ in range(count)
        )
    )
    ids = [m.json()["id"] for m in made]
    pending = set(ids)
    latencies: list[float] = []
    while pending:
        await asyncio.sleep(0.2)
        page = (await http.get(f"/api/v1/agents/{agent}/runs", params={"limit": 1000})).json()
        for run in page["runs"]:
            if run["id"] in pending and run["status"] in ("completed", "failed"):
                pending.discard(run["id"])
                assert run["status"] == "completed", run
                created = _ts(run["created_at"])
                latencies.append(_ts(run["finished_at"]) - created)
        if time.perf_counter() - started > 600:
            raise TimeoutError(f"{len(pending)} runs still unfinished after 600 s")
    elapsed = time.perf_counter() - started
    return {
        "runs": count,
        "seconds": round(elapsed, 3),
        "runs_per_second": round(count / elapsed, 2),
        "latency_seconds": summary(latencies),
    }


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


async def _first_delta_aether(http: httpx.AsyncClient, agent: str) -> float:
    started = time.perf_counter()
    body = {"input": "stream", "stream": True}
    first: float | None = None
    async with http.stream("POST", f"/api/v1/agents/{agent}/runs", json=body) as response:
        async for line in response.aiter_lines():  # to the end of the run
            if first is None and line.startswith("event: delta"):
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the run streamed no delta")
    return first


async def _first_chunk_floor(url: str) -> float:
    body = {"model": "test-model", "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with httpx.AsyncClient(timeout=30) as client:
        first: float | None = None
        started = time.perf_counter()
        async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if first is None and line.startswith("data: ") and '"content"' in line:
                    first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the model streamed no content")
    return first


async def _ttft(http: httpx.AsyncClient, agent: str, url: str, samples: int) -> dict[str, Any]:
    aether: list[float] = []
    floor: list[float] = []
    for _ in range(samples):
        floor.append(await _first_chunk_floor(url) * 1000)
        aether.append(await _first_delta_aether(http, agent) * 1000)
    return {
        "aether_ms": summary(aether),
        "floor_ms": summary(floor),
        "added_ms_p50": round(percentile(aether, 50) - percentile(floor, 50), 2),
        "added_ms_p95": round(percentile(aether, 95) - percentile(floor, 95), 2),
        "goal_ms_p50": 20.0,
    }


async def _bench(cluster: Cluster, url: str, llm: Any, args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {cluster.admin_token}"}
    async with httpx.AsyncClient(base_url=cluster.api, headers=headers, timeout=120) as http:
        agent = await _setup(http, url)
        (await http.post(f"/api/v1/agents/{agent}/deploy", json={"replicas": 1})).raise_for_status()
        for _ in range(300):  # the leader places it within a second or two
            got = (await http.get(f"/api/v1/agents/{agent}")).json()
            if (got.get("deployment") or {}).get("nodes"):
                break
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError("the agent was not placed on the node")
        llm.default = _ten_steps
        overhead = await _overhead(http, agent, url, args.runs)
        llm.default = say("hello")
        concurrent = await _concurrent(http, agent, args.concurrent)
        llm.default = say("one two three four five six seven eight nine ten")
        ttft = await _ttft(http, agent, url, args.ttft)
    return {
        "overhead_per_step": overhead,
        "concurrent_runs": concurrent,
        "time_to_first_token": ttft,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--ttft", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, model_server() as llm:
        cluster = Cluster(Path(tmp))
        cluster.env["AETHER_RATE_LIMIT_PER_MINUTE"] = "10000000"
        cluster.env["AETHER_RATE_LIMIT_BURST"] = "1000000"
        try:
            cluster.start_server()
            cluster.start_node("bench-node")
            results = asyncio.run(_bench(cluster, llm.url, llm, args))
        finally:
            cluster.stop()
    write_result(RESULT_NAME, {"parameters": vars(args), **results})


if __name__ == "__main__":
    main()

"""Policy decisions per second and their latency (goal: < 1 ms p99 per tool call).

``decide`` on a realistic policy (default-safe's shape plus argument constraints of
each kind, budgets and egress hosts), cycling through calls that are allowed, held
for approval and denied by each kind of rule. Measured in one process, as the agent
runtime will call it: the Cedar policy set is parsed once per policy version (cached),
each decision is one Cedar request (two when the call is allowed and the policy
holds tools for approval: whether it may run unattended).

    .venv/bin/python -m bench.policy_bench
"""

from __future__ import annotations

import os
import statistics
import time

from aether.agents.policy import (
    ArgConstraint,
    Counters,
    DecisionRequest,
    Policy,
    TokenBudgets,
    decide,
)
from bench.common import write_result

POLICY = Policy(
    id="bench",
    tools=["search", "cluster-status", "apps-list", "run-code", "run-command", "weather"],
    constraints=[
        ArgConstraint(tool="run-command", arg="command", allow=["ls", "cat", "grep", "head"]),
        ArgConstraint(tool="weather", arg="city", max_length=64),
        ArgConstraint(tool="weather", arg="units", one_of=["metric", "imperial"]),
        ArgConstraint(tool="search", arg="query", like="*"),
    ],
    approval_required=["run-code"],
    max_steps=20,
    max_tool_calls=20,
    token_budgets=TokenBudgets(per_run=50_000, per_agent_per_day=1_000_000),
    egress_hosts=["api.weather.example.com", "pypi.org"],
)

CALLS = [
    DecisionRequest(principal="agt_1", tool_id="search", arguments={"query": "restart policy"}),
    DecisionRequest(principal="agt_1", tool_id="run-command", arguments={"command": "ls -la"}),
    DecisionRequest(principal="agt_1", tool_id="run-command", arguments={"command": "rm -rf /"}),
    DecisionRequest(principal="agt_1", tool_id="run-code", arguments={"code": "print(1)"}),
    DecisionRequest(
        principal="agt_1",
        tool_id="weather",
        arguments={"city": "Oslo", "units": "metric"},
        hosts=["api.weather.example.com"],
    ),
    DecisionRequest(principal="agt_1", tool_id="weather", hosts=["evil.example.net"]),
    DecisionRequest(principal="agt_1", tool_id="scale", arguments={"app": "w", "instances": 3}),
    DecisionRequest(
        principal="agt_1", tool_id="search", counters=Counters(steps=20, tokens_run=60_000)
    ),
]


def bench(decisions: int = 20_000) -> dict[str, float]:
    outcomes = {decide(POLICY, call).outcome for call in CALLS}  # warm the cache
    assert outcomes == {"allow", "approval", "deny"}, outcomes
    wall: list[float] = []
    cpu: list[float] = []
    start = time.perf_counter()
    for n in range(decisions):
        call = CALLS[n % len(CALLS)]
        began, began_cpu = time.perf_counter(), time.thread_time()
        decide(POLICY, call)
        cpu.append(time.thread_time() - began_cpu)
        wall.append(time.perf_counter() - began)
    elapsed = time.perf_counter() - start
    return {
        "decisions": decisions,
        "decisions_per_s": round(decisions / elapsed),
        **_percentiles("wall", wall),
        # the work of a decision without the time the machine gave other processes
        **_percentiles("cpu", cpu),
        "load_average_1m": os.getloadavg()[0],
        "goal_p99_ms": 1.0,
    }


def _percentiles(name: str, samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        f"{name}_p50_ms": round(statistics.median(ordered) * 1000, 4),
        f"{name}_p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 4),
        f"{name}_max_ms": round(ordered[-1] * 1000, 4),
    }


def main() -> None:
    write_result("policy_decisions", bench())


if __name__ == "__main__":
    main()

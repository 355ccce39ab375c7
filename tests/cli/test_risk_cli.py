"""``aether risk``, ``aether drill`` and ``aether signal`` as a user runs them, against a
real in-process server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aether.client import ApiClient
from aether.model.api import RegisterIn
from aether.model.cluster import NodeCapabilities
from aether.model.risk import RiskStatus
from tests.support.api import unique
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-risk-cli"), lease_ttl=60.0) as running:
        yield running


def aether(srv: RunningServer, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AETHER_") and not k.startswith("XDG_")
    }
    env.update({"XDG_CACHE_HOME": str(home / "cache"), "XDG_CONFIG_HOME": str(home / "config")})
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "aether",
            *args,
            "--server",
            srv.base_url,
            "--token",
            srv.admin_token,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_json(result: subprocess.CompletedProcess[str]) -> Any:
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, (result.stdout, result.stderr)
    return json.loads(lines[0])


async def wait_for(srv: RunningServer, node: str, status: RiskStatus, cause: str) -> None:
    async with ApiClient(srv.base_url, srv.admin_token) as api:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(
                a.node == node and a.status is status and a.root_cause == cause
                for a in await api.risk()
            ):
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{node} never became {status} {cause}")


async def test_signal_then_risk_in_text_and_json(srv: RunningServer, tmp_path: Path) -> None:
    node = unique("cli-node")
    recorded = aether(srv, tmp_path, "signal", node, "--capacity", "0.1", "--format", "json")
    assert recorded.returncode == 0, recorded.stderr
    data = one_json(recorded)
    assert data["node"] == node and len(data["ids"]) == 1
    assert data["signals"][0]["kind"] == "capacity" and data["signals"][0]["source"] == "cli"
    await wait_for(srv, node, RiskStatus.HIGH, "Low Spare Capacity")

    table = aether(srv, tmp_path, "risk")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == [
        "NODE",
        "STATUS",
        "CONFIDENCE",
        "ROOT",
        "CAUSE",
        "RULE",
        "KEY",
        "INPUTS",
    ]
    [line] = [r for r in rows if r.startswith(node)]
    assert "HIGH" in line and "Low Spare Capacity" in line and "market.capacity" in line
    assert "score=0.1" in line

    listed = one_json(aether(srv, tmp_path, "risk", "--format", "json"))
    [mine] = [a for a in listed["assessments"] if a["node"] == node]
    assert mine["status"] == "HIGH" and mine["rule"] == "market.capacity"
    assert mine["inputs"]["market.capacity"]["score"] == 0.1

    text = aether(srv, tmp_path, "signal", node, "--capacity", "0.9", "--no-rebalance")
    assert text.returncode == 0, text.stderr
    assert f"recorded 2 signal(s) for {node}" in text.stdout
    await wait_for(srv, node, RiskStatus.LOW, "Stable")
    history = one_json(aether(srv, tmp_path, "risk", node, "--format", "json"))
    assert history["node"] == node
    assert [a["status"] for a in history["assessments"][:2]] == ["LOW", "HIGH"]
    shown = aether(srv, tmp_path, "risk", node, "--limit", "1")
    assert shown.returncode == 0, shown.stderr
    assert "LOW" in shown.stdout and "HIGH" not in shown.stdout


async def test_drill_start_and_stop(srv: RunningServer, tmp_path: Path) -> None:
    node = unique("cli-drill")
    async with ApiClient(srv.base_url, srv.node_token(node)) as node_api:
        await node_api.register(
            RegisterIn(
                id=node,
                capabilities=NodeCapabilities(cpus=4, memory_mb=4096, drivers=["process"]),
                router_url="http://127.0.0.1:9",
            )
        )
    started = aether(srv, tmp_path, "drill", "start", "--node", node, "--format", "json")
    assert started.returncode == 0, started.stderr
    assert one_json(started) == {
        "node": node,
        "signals": 11,
        "base_price": 0.1,
        "spike_price": 0.16,
    }
    await wait_for(srv, node, RiskStatus.CRITICAL, "Cloud Provider Signal")
    table = aether(srv, tmp_path, "risk")
    [line] = [r for r in table.stdout.splitlines() if r.startswith(node)]
    assert "CRITICAL" in line and "Cloud Provider Signal" in line and "notice=True" in line

    stopped = aether(srv, tmp_path, "drill", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"drill stopped on {node}"
    await wait_for(srv, node, RiskStatus.LOW, "Stable")
    again = aether(srv, tmp_path, "drill", "stop", "--format", "json")
    assert one_json(again) == {"nodes": [], "signals": 0}


def test_usage_and_api_errors(srv: RunningServer, tmp_path: Path) -> None:
    nothing = aether(srv, tmp_path, "signal", "n1")
    assert nothing.returncode == 2
    assert "--price" in nothing.stderr
    negative = aether(srv, tmp_path, "signal", "n1", "--price", "-1", "--format", "json")
    assert negative.returncode == 2
    assert "positive" in one_json(negative)["error"]["message"]
    assert aether(srv, tmp_path, "drill").returncode == 2
    unknown = aether(srv, tmp_path, "risk", unique("nobody"), "--format", "json")
    assert unknown.returncode == 41
    assert one_json(unknown)["error"]["code"] == "not_found"
    ghost = aether(srv, tmp_path, "drill", "start", "--node", unique("ghost"))
    assert ghost.returncode == 41
    assert "not live" in ghost.stderr

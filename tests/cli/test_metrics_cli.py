"""``aether metrics`` (the latest sample) and ``aether metrics --watch`` (the live stream)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether.client import ApiClient
from aether.model.telemetry import EndpointMetrics
from tests.cli.test_risk_cli import aether, one_json
from tests.support.api import unique
from tests.support.server import RunningServer, running_server
from tests.support.telemetry import node_sample


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-metrics-cli")) as running:
        yield running


def _push(srv: RunningServer, node: str, seq: int) -> None:
    async def push() -> None:
        async with ApiClient(srv.base_url, srv.node_token(node)) as client:
            await client.push_metrics(
                node_sample(
                    node,
                    seq,
                    cpu=0.25,
                    memory_used_mb=512,
                    memory_total_mb=2048,
                    disk_used_mb=10,
                    disk_total_mb=100,
                    endpoints=[EndpointMetrics(app="shop", calls=20, total_ms=200.0)],
                )
            )

    asyncio.run(push())


def test_metrics_shows_the_latest_sample(srv: RunningServer, tmp_path: Path) -> None:
    node = unique("node")
    deadline = time.monotonic() + 15
    seq = 0
    while True:
        seq += 1
        _push(srv, node, seq)
        sample = one_json(aether(srv, tmp_path, "metrics", "--format", "json"))["sample"]
        if sample and node in sample["nodes"]:
            break
        assert time.monotonic() < deadline, "the node never showed up in a sample"
        time.sleep(0.3)
    assert sample["nodes"][node]["cpu"] == 0.25
    assert sample["nodes"][node]["memory_fraction"] == 0.25
    text = aether(srv, tmp_path, "metrics")
    assert text.returncode == 0, text.stderr
    assert node in text.stdout and "25%" in text.stdout


def test_metrics_watch_follows_the_stream(srv: RunningServer, tmp_path: Path) -> None:
    _push(srv, unique("node"), 1)
    cmd = [sys.executable, "-m", "aether", "metrics", "--watch", "--format", "json"]
    proc = subprocess.Popen(
        [*cmd, "--server", srv.base_url, "--token", srv.admin_token],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())["sample"]
        second = json.loads(proc.stdout.readline())["sample"]
        assert second["ts"] > first["ts"]  # a new sample each second, not a repeat
    finally:
        proc.kill()
        proc.wait(10)

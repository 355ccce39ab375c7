"""Telemetry end to end: a real node pushes /proc and router figures; the server aggregates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"


def test_a_node_pushes_real_figures_every_second(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    deployed = cluster.cli_json("deploy", str(EXAMPLE), "--instances", "2")
    assert deployed["status"] == "active"
    with httpx.Client(timeout=5) as http:
        for _ in range(20):
            assert http.get(deployed["url"]).status_code == 200

    def sample() -> dict[str, Any] | None:
        latest = cluster.api_get("/metrics")
        if not latest or "n1" not in latest["nodes"] or "hello-python" not in latest["apps"]:
            return None
        return latest if latest["apps"]["hello-python"]["instances"] == 2 else None

    latest = wait_for(sample, 20, "the node and its app in the telemetry")
    node = latest["nodes"]["n1"]
    assert 0.0 <= node["cpu"] <= 1.0
    assert 0.0 < node["memory_fraction"] < 1.0
    assert 0.0 < node["disk_fraction"] <= 1.0
    assert node["instances"] == 2 and not node["stale"]
    app = latest["apps"]["hello-python"]
    assert app["rss_mb_per_instance"] > 1  # a Python process holds a few MB at least

    def calls_seen() -> list[dict[str, Any]] | None:
        with httpx.Client(timeout=5) as http:
            http.get(deployed["url"])
        points = cluster.api_get("/metrics/apps/hello-python?seconds=120")
        return [p for p in points if p["calls_per_s"] > 0] or None

    busy = wait_for(calls_seen, 20, "router calls in the app's history")
    assert all(p["latency_ms"] > 0 for p in busy)

    # one sample a second, each from the node's latest push
    def three_seconds() -> list[dict[str, Any]] | None:
        history: list[dict[str, Any]] = cluster.api_get("/metrics/nodes/n1?seconds=30")
        return history if len(history) >= 3 else None

    history = wait_for(three_seconds, 20, "three seconds of the node's history")
    stamps = [p["ts"] for p in history]
    assert stamps == sorted(stamps) and all(not p["stale"] for p in history)

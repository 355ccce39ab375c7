"""Rollout strategies against real processes: no lost request, auto-revert, canary, blue-green."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_core_scenario import Probe
from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"


def _variant(
    tmp: Path, name: str, greeting: str, rollout: str = "", start: str | None = None
) -> Path:
    app = tmp / name
    shutil.copytree(EXAMPLE, app)
    toml = (app / "aether.toml").read_text().replace("Hello from Aether", greeting)
    if start is not None:
        toml = toml.replace('start = "python3 app.py"', f"start = {json.dumps(start)}")
    (app / "aether.toml").write_text(toml + ("\n[rollout]\n" + rollout if rollout else ""))
    return app


def _versions(cluster: Cluster) -> dict[int, int]:
    counts: dict[int, int] = {}
    for inst in cluster.active("hello-python"):
        counts[inst["version"]] = counts.get(inst["version"], 0) + 1
    return counts


def _events(cluster: Cluster, deployment_id: str) -> list[str]:
    return [e["type"] for e in cluster.api_get(f"/deployments/{deployment_id}/events")]


def _start(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")


def test_rolling_deploy_loses_no_request(cluster: Cluster, tmp_path: Path) -> None:
    _start(cluster)
    rolling = 'strategy = "rolling"\nmax_parallel = 1\nmin_healthy_time = 0.5\n'
    cluster.cli_json("deploy", str(_variant(tmp_path, "v1", "one", rolling)), "--instances", "3")
    probe = Probe(f"{cluster.router('n1')}/apps/hello-python/")
    probe.start()
    try:
        second = cluster.cli_json("deploy", str(_variant(tmp_path, "v2", "two", rolling)))
    finally:
        time.sleep(0.5)
        probe.stop()
    assert second["status"] == "active"
    assert probe.failures == []
    assert probe.ok > 20
    wait_for(lambda: _versions(cluster) == {2: 3}, 10, "only v2 serving")
    assert "rollout_done" in _events(cluster, second["deployment_id"])


def test_failed_rollout_reverts_by_itself(cluster: Cluster, tmp_path: Path) -> None:
    _start(cluster)
    first = cluster.cli_json("deploy", str(_variant(tmp_path, "v1", "one")), "--instances", "2")
    probe = Probe(f"{cluster.router('n2')}/apps/hello-python/")
    probe.start()
    try:
        broken = _variant(
            tmp_path,
            "v2",
            "two",
            "auto_revert = true\nhealthy_deadline = 20\n",
            start="python3 -c 'import sys; print(\"boom\"); sys.exit(3)'",
        )
        result = cluster.cli("deploy", str(broken), "--format", "json", check=False)
    finally:
        probe.stop()
    assert result.returncode == 40
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "deploy_failed"
    assert probe.failures == []  # v1 served throughout
    blueprint = cluster.api_get("/blueprints/hello-python")
    assert blueprint["version"] == 1
    assert blueprint["deployment_id"] == first["deployment_id"]
    deployments = {
        d["version"]: d["status"]
        for d in cluster.cli_json("deployments", "hello-python")["deployments"]
    }
    assert deployments == {1: "active", 2: "failed"}
    failed_id = next(
        d["id"]
        for d in cluster.cli_json("deployments", "hello-python")["deployments"]
        if d["version"] == 2
    )
    timeline = cluster.cli_json("events", failed_id)["events"]
    kinds = [e["type"] for e in timeline]
    assert "rollout_failed" in kinds and "reverted" in kinds
    assert any("boom" in e["message"] for e in timeline)  # the app's own output explains it
    wait_for(lambda: _versions(cluster) == {1: 2}, 15, "v1 only, v2 instances gone")
    text = cluster.cli("events", "hello-python@2").stdout
    assert "reverted to v1" in text

    def reverted_alert() -> bool:
        return any(
            a["rule"] == "RolloutReverted"
            and a["labels"] == {"app": "hello-python"}
            and a["state"] == "firing"
            for a in cluster.api_get("/alerts")
        )

    wait_for(reverted_alert, 20, "the RolloutReverted alert firing (the leader's next pass)")


def test_canary_waits_for_promotion(cluster: Cluster, tmp_path: Path) -> None:
    _start(cluster)
    cluster.cli_json("deploy", str(_variant(tmp_path, "v1", "one")), "--instances", "3")
    canary = 'strategy = "canary"\ncanary = 1\nauto_promote = false\n'
    second = cluster.cli_json("deploy", str(_variant(tmp_path, "v2", "two", canary)), "--no-wait")
    wait_for(
        lambda: "awaiting_promotion" in _events(cluster, second["deployment_id"]),
        20,
        "the canary to be healthy",
    )
    assert _versions(cluster) == {1: 3, 2: 1}
    messages = {
        httpx.get(f"{cluster.router('n1')}/apps/hello-python/").json()["message"] for _ in range(20)
    }
    assert messages == {"one", "two"}  # the canary takes a share of the traffic
    cluster.cli_json("promote", "hello-python")
    wait_for(lambda: _versions(cluster) == {2: 3}, 30, "the promoted rollout to finish")
    assert cluster.cli_json("deployments", "hello-python")["deployments"][0]["status"] == "active"


def test_blue_green_switches_together(cluster: Cluster, tmp_path: Path) -> None:
    _start(cluster)
    cluster.cli_json("deploy", str(_variant(tmp_path, "v1", "one")), "--instances", "2")
    seen: list[dict[int, int]] = []
    second = cluster.cli_json(
        "deploy", str(_variant(tmp_path, "v2", "two", 'strategy = "blue-green"\n')), "--no-wait"
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        counts = _versions(cluster)
        seen.append(counts)
        if counts == {2: 2}:
            break
        time.sleep(0.02)
    assert seen[-1] == {2: 2}
    # the old version never lost an instance before the new one was complete
    assert all(c.get(1, 0) == 2 for c in seen if c.get(2, 0) < 2)
    assert "rollout_done" in _events(cluster, second["deployment_id"])

"""Migration end to end, with real server and node processes and the real CLI.

(a) a stateless app under steady load through a router moves with ``aether
migrate``: not one request fails; (b) ``examples/counter`` (stateful) moves with
its count; (c) ``aether drain`` moves it again, count and all. CRIU is off on
these nodes (``criu check`` fails on this VM), so the cooperative protocol runs.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.test_core_scenario import Probe
from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def other(node: str) -> str:
    return "n2" if node == "n1" else "n1"


def test_stateless_migration_loses_no_request(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")
    cluster.cli_json("deploy", str(EXAMPLES / "hello-python"), "--instances", "1")
    (inst,) = cluster.active("hello-python")
    target = other(inst["node"])

    probe = Probe(f"{cluster.router('n1')}/apps/hello-python/")
    probe.start()
    try:
        wait_for(lambda: probe.ok >= 20, 10, "steady traffic before the move")
        moved = cluster.cli_json("migrate", inst["key"], "--to", target)
        seen = probe.ok
        wait_for(lambda: probe.ok >= seen + 20, 10, "traffic after the move")
    finally:
        probe.stop()

    assert moved["status"] == "done", moved
    assert moved["kind"] == "stateless" and moved["from_node"] == inst["node"]
    assert moved["to_node"] == target
    assert probe.failures == [], probe.failures[:5]
    (now,) = cluster.active("hello-python")
    assert now["node"] == target and now["key"] == moved["replacement"]


def test_counter_keeps_its_count_across_migrate_and_drain(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")
    cluster.cli_json("deploy", str(EXAMPLES / "counter"))
    (inst,) = cluster.active("counter")
    url = f"{cluster.router('n1')}/apps/counter/"
    with httpx.Client(timeout=5) as http:
        for i in range(1, 8):
            assert http.post(url + "inc").json()["count"] == i

        # (b) aether migrate: checkpoint on one node, restore on the other
        target = other(inst["node"])
        moved = cluster.cli_json("migrate", f"counter/{inst['n']}", "--to", target)
        assert moved["status"] == "done" and moved["kind"] == "stateful", moved
        assert moved["snapshot"].startswith("sha256:")
        (now,) = cluster.active("counter")
        assert now["node"] == target
        assert http.get(url).json() == {"count": 7, "instance": f"counter@1/{now['n']}"}
        assert http.post(url + "inc").json()["count"] == 8

        # (c) aether drain: everything on the node moves, the count with it
        drained = cluster.cli_json("drain", target, "--wait")
        assert drained["draining"] is True
        assert [m["status"] for m in drained["moved"]] == ["done"]
        (back,) = cluster.active("counter")
        assert back["node"] == inst["node"]
        assert http.get(url).json()["count"] == 8

    snapshots = cluster.cli_json("snapshots", "counter")["snapshots"]
    moves = [s for s in snapshots if s["kind"] == "cooperative"]
    assert len(moves) == 2 and {s["kind"] for s in snapshots} <= {"cooperative", "periodic"}
    assert cluster.node_state(target) == "draining"
    cluster.cli("undrain", target)
    wait_for(lambda: cluster.node_state(target) == "ready", 10, f"{target} ready again")

"""Rebalancing after a drain ends, with real server and node processes and the real CLI.

Two nodes, an app with 4 instances: ``aether drain n2`` moves them all to n1;
``aether undrain n2`` makes n2 schedulable again. (a) The leader's automatic
step spreads them back 2/2, one move at a time, while a client loop through a
router gets no failed request; (b) with the automatic step off
(``AETHER_REBALANCE_INTERVAL=0``) nothing moves until ``aether rebalance APP``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.test_core_scenario import Probe
from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
APP = "hello-python"


def _placement(cluster: Cluster) -> list[str]:
    return sorted(i["node"] for i in cluster.active(APP))


def _all_on_n1(cluster: Cluster) -> None:
    """4 instances spread over n1 and n2, then n2 drained and undrained: all on n1."""
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")
    cluster.cli_json("deploy", str(EXAMPLES / APP), "--instances", "4")
    wait_for(lambda: _placement(cluster) == ["n1", "n1", "n2", "n2"], 60, "a 2/2 spread")
    drained = cluster.cli_json("drain", "n2", "--wait")
    assert all(m["status"] == "done" for m in drained["moved"]), drained
    wait_for(lambda: _placement(cluster) == ["n1"] * 4, 60, "every instance on n1")
    cluster.cli("undrain", "n2")
    wait_for(lambda: cluster.node_state("n2") == "ready", 10, "n2 ready again")


def test_the_leader_spreads_instances_back_after_an_undrain(cluster: Cluster) -> None:
    cluster.env["AETHER_REBALANCE_INTERVAL"] = "2"
    _all_on_n1(cluster)
    probe = Probe(f"{cluster.router('n1')}/apps/{APP}/")
    probe.start()
    try:
        wait_for(lambda: probe.ok >= 10, 10, "steady traffic")
        started = time.monotonic()
        wait_for(
            lambda: _placement(cluster) == ["n1", "n1", "n2", "n2"], 60, "the spread back to 2/2"
        )
        took = time.monotonic() - started
        time.sleep(1.5)  # keep the load on while the last old instance retires
    finally:
        probe.stop()
    assert probe.failures == [], probe.failures[:5]
    assert probe.ok > 20
    assert took < 60
    moves = [
        d
        for d in cluster.cli_json("decisions", "--app", APP, "--kind", "rebalance")["decisions"]
        if d["outcome"] == "applied"
    ]
    assert len(moves) == 2, moves
    for move in moves:
        assert move["layer"] == 1 and move["kind"] == "rebalance"
        assert move["action"]["from"] == "n1" and move["action"]["to"] == "n2"
        assert move["inputs"]["per_node"]
        assert "spread" in move["reason"]
    # one move at a time: the second started after the first had finished
    ids = {move["action"]["migration"] for move in moves}
    migrations = cluster.cli_json("migrations", APP)["migrations"]
    rebalances = sorted((m for m in migrations if m["id"] in ids), key=lambda m: m["started_at"])
    assert [m["status"] for m in rebalances] == ["done", "done"], rebalances
    assert rebalances[0]["finished_at"] <= rebalances[1]["started_at"]
    # settled: nothing more moves
    time.sleep(3)
    assert _placement(cluster) == ["n1", "n1", "n2", "n2"]


def test_aether_rebalance_spreads_on_demand(cluster: Cluster) -> None:
    cluster.env["AETHER_REBALANCE_INTERVAL"] = "0"  # the automatic step is off
    _all_on_n1(cluster)
    time.sleep(3)
    assert _placement(cluster) == ["n1"] * 4  # nothing spreads by itself

    done = cluster.cli_json("rebalance", APP)
    assert _placement(cluster) == ["n1", "n1", "n2", "n2"]
    assert [(m["from_node"], m["to_node"]) for m in done["moves"]] == [("n1", "n2")] * 2
    assert all(m["status"] == "done" for m in done["moves"]), done

    again = cluster.cli("rebalance", APP)
    assert "nothing to move" in again.stdout
    missing = cluster.cli("rebalance", "no-such-app", check=False)
    assert missing.returncode != 0 and "no-such-app" in missing.stderr

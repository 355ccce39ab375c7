"""Benchmarks of the self-driving loop against real processes: fire drill and autoscaling.

    .venv/bin/python -m bench.self_driving_bench [drill|autoscale|all] [--runs N]

drill: a server and two nodes run hello-python (2 instances) and the stateful
counter. Each run starts a drill on the node holding the counter and times
drill start → every instance that was on it ACTIVE on the other node; the
peer, measured in the same run, is an operator's ``aether drain`` of the same
node (the same moves without detection and decision). Runs alternate nodes.

autoscale: an app whose calls take 250 ms, ``[autoscale] metric = "in_flight"``,
target 1, min 1; each run applies a load step (6 clients in a loop through a
router) and times it → a second instance ACTIVE, then waits for idleness to
bring it back to one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, summary, write_result
from tests.e2e.test_self_driving import SLOW_APP, SLOW_TOML, Load, critical_after
from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

EXAMPLES = REPO / "examples"


def _on(cluster: Cluster, node: str) -> list[str]:
    return [
        f"{i['app']}/{i['n']}"
        for app in ("hello-python", "counter")
        for i in cluster.active(app)
        if i["node"] == node
    ]


def _moved(cluster: Cluster, source: str, expected: int) -> bool:
    if _on(cluster, source):
        return False
    return len(cluster.active("hello-python")) + len(cluster.active("counter")) == expected


def _time_move(cluster: Cluster, source: str, expected: int, start_move: list[str]) -> float:
    start = time.perf_counter()
    cluster.cli_json(*start_move)
    wait_for(lambda: _moved(cluster, source, expected), 120, f"{source} emptied", interval=0.02)
    return time.perf_counter() - start


def bench_drill(runs: int) -> None:
    drills: list[float] = []
    drains: list[float] = []
    to_critical: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        cluster.env["AETHER_CONTROLLER_UNDRAIN_AFTER"] = "0"
        try:
            cluster.start_server()
            cluster.start_node("n1")
            cluster.start_node("n2")
            cluster.cli_json("deploy", str(EXAMPLES / "hello-python"), "--instances", "2")
            cluster.cli_json("deploy", str(EXAMPLES / "counter"))
            total = 3
            wait_for(lambda: _moved(cluster, "none", total), 60, "everything ACTIVE")
            for run in range(runs):
                source = cluster.active("counter")[0]["node"]
                target = "n2" if source == "n1" else "n1"
                drills.append(
                    _time_move(cluster, source, total, ["drill", "start", "--node", source])
                )
                to_critical.append(critical_after(cluster, source))
                cluster.cli_json("drill", "stop", "--node", source)
                wait_for(lambda s=source: cluster.node_state(s) == "ready", 60, "undrained")
                # the peer: the same moves, back, by an operator's drain
                drains.append(_time_move(cluster, target, total, ["drain", target]))
                cluster.cli_json("undrain", target)
                wait_for(lambda t=target: cluster.node_state(t) == "ready", 30, "undrained")
                print(
                    f"run {run + 1}: drill {drills[-1]:.2f}s (CRITICAL after "
                    f"{to_critical[-1]:.3f}s), operator drain {drains[-1]:.2f}s",
                    file=sys.stderr,
                )
        finally:
            cluster.stop()
    drill_stats, drain_stats = summary(drills), summary(drains)
    write_result(
        "fire_drill",
        {
            "command": f".venv/bin/python -m bench.self_driving_bench drill --runs {runs}",
            "what": "drill start → every instance of the drilled node (hello-python and the "
            "stateful counter, 1 to 2 instances) ACTIVE on the other node; peer: `aether drain` "
            "of the same node in the same run",
            "drill_seconds": {k: round(v, 3) for k, v in drill_stats.items()},
            "critical_after_seconds": {k: round(v, 3) for k, v in summary(to_critical).items()},
            "operator_drain_seconds": {k: round(v, 3) for k, v in drain_stats.items()},
            "ratio_drill_to_drain_median": round(drill_stats["median"] / drain_stats["median"], 3),
            "aim_critical_seconds": 2.0,
        },
    )


def bench_autoscale(runs: int) -> None:
    reactions: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        app = root / "slow"
        app.mkdir()
        (app / "app.py").write_text(SLOW_APP)
        (app / "aether.toml").write_text(SLOW_TOML)
        cluster = Cluster(root)
        try:
            cluster.start_server()
            cluster.start_node("n1")
            cluster.start_node("n2")
            cluster.cli_json("deploy", str(app))
            wait_for(lambda: len(cluster.active("slow")) == 1, 60, "one instance")
            for run in range(runs):
                start = time.perf_counter()
                with Load(f"{cluster.router('n1')}/apps/slow/", workers=6):
                    wait_for(
                        lambda: len(cluster.active("slow")) >= 2, 60, "scale up", interval=0.02
                    )
                    reactions.append(time.perf_counter() - start)
                wait_for(lambda: len(cluster.active("slow")) == 1, 120, "back to one")
                print(
                    f"run {run + 1}: load step → 2nd ACTIVE {reactions[-1]:.2f}s", file=sys.stderr
                )
        finally:
            cluster.stop()
    stats = summary(reactions)
    write_result(
        "autoscale_reaction",
        {
            "command": f".venv/bin/python -m bench.self_driving_bench autoscale --runs {runs}",
            "what": "load step (6 clients, 250 ms calls, in_flight target 1) → a new instance "
            "ACTIVE; scale_up_cooldown 1 s, telemetry every 1 s",
            "seconds": {k: round(v, 3) for k, v in stats.items()},
            "aim_median_seconds": 5.0,
            "reference": "Ray Serve's default upscale_delay_s is 30 s (documented default, "
            "not measured here)",
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("which", nargs="?", default="all", choices=["drill", "autoscale", "all"])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.which in ("drill", "all"):
        bench_drill(args.runs)
    if args.which in ("autoscale", "all"):
        bench_autoscale(args.runs)


if __name__ == "__main__":
    main()

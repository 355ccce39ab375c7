"""The HA stack against the embedded one: leader failover and deploy latency.

    .venv/bin/python -m bench.ha_bench [failover|deploy|all] [--runs N]

failover: three servers on a three-member etcd cluster (lease TTL 2 s), two
nodes, hello-python. Each run kills the leader server with SIGKILL, asks any
surviving server to scale the app up by one at once, and times kill → a new
leader holds the key, and kill → the new instance is placed (the new leader
reconciling). The killed server is started again as a follower.

deploy: ``aether deploy`` of hello-python (a new artifact every run, 2
instances) to the first 200 of the new version through a router, in the same
run on the embedded stack (one server, SQLite), on the HA stack of ``aether up
--ha`` (three servers on three etcd members, records and artifacts shared on
one disk) and on the production HA stack (three servers on three etcd
members, records on PostgreSQL, artifacts on S3, nothing shared on disk).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.cluster_benches import EXAMPLE, _first_200
from bench.common import summary, write_result
from tests.support.cluster import Cluster
from tests.support.ha import HaCluster
from tests.support.waiting import wait_for


def _rounded(values: list[float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in summary(values).items()}


def bench_failover(runs: int) -> None:
    elected: list[float] = []
    reconciled: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        ha = HaCluster(Path(tmp))
        try:
            ha.start_servers()
            ha.start_node("n1")
            ha.start_node("n2")
            ha.cli_json("deploy", str(EXAMPLE), "--instances", "1")
            for run in range(runs):
                old = wait_for(lambda: (i := ha.leader_index()) is not None and i + 1, 20, "leader")
                old -= 1
                want = len(ha.api_get("/instances?app=hello-python")) + 1
                start = time.perf_counter()
                ha.kill_server_at(old)
                ha.cli_json("scale", f"hello-python={want}")
                wait_for(
                    lambda o=old: (i := ha.leader_index()) is not None and i != o,
                    30,
                    "new leader",
                    interval=0.02,
                )
                elected.append(time.perf_counter() - start)
                wait_for(
                    lambda w=want: len(ha.api_get("/instances?app=hello-python")) >= w,
                    30,
                    "placed",
                    interval=0.02,
                )
                reconciled.append(time.perf_counter() - start)
                print(
                    f"run {run + 1}: new leader {elected[-1]:.2f}s, "
                    f"placement {reconciled[-1]:.2f}s",
                    file=sys.stderr,
                )
                ha.start_server_at(old)
        finally:
            ha.stop()
    write_result(
        "leader_failover",
        {
            "command": f".venv/bin/python -m bench.ha_bench failover --runs {runs}",
            "what": "kill -9 the leader of 3 servers on 3 etcd members (lease TTL 2 s) → a new "
            "leader holds the key; → a scale-up asked right after the kill is placed",
            "new_leader_seconds": _rounded(elected),
            "reconciling_seconds": _rounded(reconciled),
            "lease_ttl_seconds": ha.lease_ttl,
            "aim_new_leader_seconds": 5.0,
        },
    )


def _deploys(cluster: Cluster, app: Path, runs: int, label: str) -> list[float]:
    url = f"{cluster.router('n1')}/apps/hello-python/"
    timings = []
    for run in range(1, runs + 1):
        (app / "build.txt").write_text(f"{label} build {run}\n")
        start = time.perf_counter()
        out = cluster.cli_json("deploy", str(app), "--instances", "2")
        _first_200(url, int(out["version"]))
        timings.append(time.perf_counter() - start)
        print(f"{label} run {run}: {timings[-1]:.3f}s", file=sys.stderr)
    return timings


def bench_deploy(runs: int) -> None:
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        app = root / "app"
        shutil.copytree(EXAMPLE, app)
        stacks: list[tuple[str, Callable[[Path], Cluster]]] = [
            ("embedded", Cluster),
            ("ha", HaCluster),
            ("ha_postgres_s3", lambda d: HaCluster(d, engines="postgres-s3")),
        ]
        for label, make in stacks:
            cluster = make(root / label)
            try:
                if isinstance(cluster, HaCluster):
                    cluster.start_servers()
                else:
                    cluster.start_server()
                cluster.start_node("n1")
                cluster.start_node("n2")
                httpx.get(f"{cluster.router('n1')}/", timeout=5)
                results[label] = _deploys(cluster, app, runs, label)
            finally:
                cluster.stop()
    embedded = summary(results["embedded"])
    write_result(
        "ha_deploy_latency",
        {
            "command": f".venv/bin/python -m bench.ha_bench deploy --runs {runs}",
            "what": "aether deploy of hello-python (new artifact each run, 2 instances) to the "
            "first 200 of the new version: embedded (1 server, SQLite) vs HA (3 servers on 3 "
            "etcd members, shared records and artifacts) vs HA on PostgreSQL + S3 (nothing "
            "shared on disk), same run",
            "embedded_seconds": _rounded(results["embedded"]),
            "ha_seconds": _rounded(results["ha"]),
            "ha_postgres_s3_seconds": _rounded(results["ha_postgres_s3"]),
            "ratio_ha_to_embedded_median": round(
                summary(results["ha"])["median"] / embedded["median"], 3
            ),
            "ratio_ha_postgres_s3_to_embedded_median": round(
                summary(results["ha_postgres_s3"])["median"] / embedded["median"], 3
            ),
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("which", nargs="?", default="all", choices=["failover", "deploy", "all"])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.which in ("failover", "all"):
        bench_failover(args.runs)
    if args.which in ("deploy", "all"):
        bench_deploy(args.runs * 2)


if __name__ == "__main__":
    main()

"""Benchmarks against real processes: deploy latency, node-loss recovery, router.

    .venv/bin/python -m bench.cluster_benches [deploy|node_loss|router|all] [--seconds N]

Each starts its own server and nodes on free loopback ports in a temporary
directory, prints its figures and writes bench/results/<name>.json.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from aether.ports import free_port
from bench.common import REPO, summary, write_result
from tests.support.certs import TestCA
from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

EXAMPLE = REPO / "examples" / "hello-python"


def _first_200(url: str, version: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as http:
        while time.monotonic() < deadline:
            try:
                response = http.get(url)
                if response.status_code == 200 and f"@{version}/" in response.json()["instance"]:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.005)
    raise TimeoutError(f"v{version} never answered at {url}")


def bench_deploy(runs: int = 20) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = Cluster(root)
        try:
            cluster.start_server()
            cluster.start_node("n1")
            cluster.start_node("n2")
            app = root / "app"
            shutil.copytree(EXAMPLE, app)
            url = f"{cluster.router('n1')}/apps/hello-python/"
            timings = []
            for run in range(1, runs + 1):
                (app / "build.txt").write_text(f"build {run}\n")  # a new artifact every run
                start = time.perf_counter()
                out = cluster.cli_json("deploy", str(app), "--instances", "2")
                _first_200(url, int(out["version"]))
                timings.append(time.perf_counter() - start)
                print(f"run {run}: {timings[-1]:.3f}s", file=sys.stderr)
        finally:
            cluster.stop()
    stats = summary(timings)
    write_result(
        "deploy_latency",
        {
            "command": ".venv/bin/python -m bench.cluster_benches deploy",
            "what": "aether deploy of hello-python (new artifact each run, 2 instances) "
            "to the first 200 from the new version through a router",
            "seconds": {k: round(v, 3) for k, v in stats.items()},
            "aim_median_seconds": 2.0,
        },
    )


def bench_node_loss(runs: int = 5, instances: int = 4) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = Cluster(root)
        timings = []
        try:
            cluster.start_server()
            cluster.start_node("n1")
            cluster.start_node("n2")
            cluster.cli_json("deploy", str(EXAMPLE), "--instances", str(instances))
            for run in range(runs):
                by_node: dict[str, int] = {}
                for inst in cluster.active("hello-python"):
                    by_node[inst["node"]] = by_node.get(inst["node"], 0) + 1
                victim = max(by_node, key=lambda n: by_node[n])
                survivor = "n2" if victim == "n1" else "n1"
                start = time.perf_counter()
                cluster.kill_node(victim)
                wait_for(
                    lambda s=survivor: (
                        len([i for i in cluster.active("hello-python") if i["node"] == s])
                        == instances
                    ),
                    60,
                    "all instances ACTIVE on the survivor",
                    interval=0.02,
                )
                timings.append(time.perf_counter() - start)
                print(f"run {run + 1}: {timings[-1]:.3f}s", file=sys.stderr)
                cluster.start_node(victim)
        finally:
            cluster.stop()
    stats = summary(timings)
    write_result(
        "node_loss_recovery",
        {
            "command": ".venv/bin/python -m bench.cluster_benches node_loss",
            "what": f"kill -9 the node holding the most of {instances} instances → all "
            "ACTIVE on the other node (lease TTL 3 s)",
            "seconds": {k: round(v, 3) for k, v in stats.items()},
            "aim_median_seconds": 5.0,
        },
    )


_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_PCT = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def _wrk(url: str, seconds: int = 10, connections: int = 32) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(_WRK_RATE.search(out).group(1))  # type: ignore[union-attr]
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    pct = {
        f"p{m.group(1)}_ms": float(m.group(2)) * scale[m.group(3)] for m in _WRK_PCT.finditer(out)
    }
    return {"requests_per_s": rate, **pct}


def bench_router(seconds: int = 10) -> None:
    """wrk against one instance: directly, through the router over plain HTTP, and
    through the router over HTTPS (TLS ends at the router; the default certificate,
    wrk connects to an IP so sends no server name), all in the same run."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk (scripts/system-deps.sh bench)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        certs = root / "tls"
        TestCA(root / "ca").issue(certs, "default", "127.0.0.1")
        https_port = free_port()
        cluster = Cluster(root)
        try:
            cluster.start_server()
            cluster.start_node("n1", "--https-port", str(https_port), "--tls-dir", str(certs))
            cluster.cli_json("deploy", str(EXAMPLE), "--instances", "1")
            direct = cluster.active("hello-python")[0]["url"] + "/"
            routed = f"{cluster.router('n1')}/apps/hello-python/"
            secure = f"https://127.0.0.1:{https_port}/apps/hello-python/"
            for url in (direct, routed, secure):  # warm up every path
                _wrk(url, seconds=min(2, seconds))
            direct_figures = _wrk(direct, seconds=seconds)
            routed_figures = _wrk(routed, seconds=seconds)
            https_figures = _wrk(secure, seconds=seconds)
        finally:
            cluster.stop()
    write_result(
        "router",
        {
            "command": ".venv/bin/python -m bench.cluster_benches router"
            + ("" if seconds == 10 else f" --seconds {seconds}"),
            "tool": f"wrk -t2 -c32 -d{seconds}s --latency",
            "direct": direct_figures,
            "through_router": routed_figures,
            "through_router_https": https_figures,
            "ratio_router_to_direct": round(
                routed_figures["requests_per_s"] / direct_figures["requests_per_s"], 3
            ),
            "ratio_https_to_http_router": round(
                https_figures["requests_per_s"] / routed_figures["requests_per_s"], 3
            ),
            "aim_ratio": 0.5,
        },
    )


def main() -> None:
    args = sys.argv[1:]
    seconds = 10
    if "--seconds" in args:  # a shorter router run (wrk's -d), to try the script
        at = args.index("--seconds")
        seconds = int(args[at + 1])
        del args[at : at + 2]
    which = args[0] if args else "all"
    benches = {
        "deploy": bench_deploy,
        "node_loss": bench_node_loss,
        "router": lambda: bench_router(seconds),
    }
    for name, fn in benches.items():
        if which in (name, "all"):
            fn()


if __name__ == "__main__":
    main()

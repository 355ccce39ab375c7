"""What sandboxing app instances costs: bwrap instances against plain processes.

    .venv/bin/python -m bench.isolation_bench [--deploys N] [--requests N]

Two clusters run side by side in one run (a server and one node each): one
node sandboxes its instances (the default, ``--isolation bwrap``), the other
runs them as plain processes (``--isolation none``). Deploys alternate between
them, then request rounds alternate, so both see the same machine load:

- ``deploy_to_first_200_s``: from ``aether deploy --no-wait`` of a new version
  of examples/hello-python (one changed file) to the first 200 from that
  version through the node's router;
- ``request_ms``: sequential GETs through the router to the ACTIVE instance.

Writes bench/results/isolation.json and prints it. Figures, never assertions.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO, summary, wait_until_quiet, write_result
from tests.support.cluster import Cluster

HELLO = REPO / "examples" / "hello-python"
MODES = ("bwrap", "none")


def _ms(values: list[float]) -> dict[str, float]:
    return {k: (v if k == "n" else round(v * 1000, 2)) for k, v in summary(values).items()}


def _s(values: list[float]) -> dict[str, float]:
    return {k: (v if k == "n" else round(v, 3)) for k, v in summary(values).items()}


def _start(root: Path, isolation: str) -> Cluster:
    cluster = Cluster(root / isolation)
    cluster.start_server()
    cluster.env["AETHER_NODE_ISOLATION"] = isolation
    cluster.start_node("n1")
    return cluster


def _deploy(cluster: Cluster, app: Path, version: int) -> float:
    """Seconds from ``aether deploy --no-wait`` to the first 200 from ``version``."""
    (app / "version.txt").write_text(f"{version}\n")  # a new artifact each time
    url = cluster.router("n1") + "/apps/hello-python/"
    marker = f"hello-python@{version}/"
    start = time.perf_counter()
    cluster.cli("deploy", str(app), "--instances", "1", "--no-wait")
    deadline = start + 120
    with httpx.Client(timeout=2) as http:
        while time.perf_counter() < deadline:
            try:
                response = http.get(url)
                if response.status_code == 200 and marker in response.text:
                    return time.perf_counter() - start
            except httpx.TransportError:
                pass
            time.sleep(0.01)
    raise RuntimeError(f"version {version} never answered through {url}")


def _requests(cluster: Cluster, count: int) -> list[float]:
    url = cluster.router("n1") + "/apps/hello-python/"
    out = []
    with httpx.Client(timeout=5) as http:
        http.get(url).raise_for_status()  # a warm connection
        for _ in range(count):
            start = time.perf_counter()
            http.get(url).raise_for_status()
            out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploys", type=int, default=5)
    parser.add_argument("--requests", type=int, default=500, help="per round; 4 rounds per mode")
    args = parser.parse_args()
    busy = wait_until_quiet()
    with tempfile.TemporaryDirectory(prefix="aether-isolation-") as tmp:
        root = Path(tmp)
        clusters: dict[str, Cluster] = {}
        apps: dict[str, Path] = {}
        try:
            for mode in MODES:
                clusters[mode] = _start(root, mode)
                apps[mode] = root / f"app-{mode}"
                shutil.copytree(HELLO, apps[mode])
            deploys: dict[str, list[float]] = {m: [] for m in MODES}
            for version in range(1, args.deploys + 1):
                for mode in MODES if version % 2 else MODES[::-1]:
                    deploys[mode].append(_deploy(clusters[mode], apps[mode], version))
            latency: dict[str, list[float]] = {m: [] for m in MODES}
            for round_ in range(4):
                for mode in MODES if round_ % 2 else MODES[::-1]:
                    latency[mode] += _requests(clusters[mode], args.requests)
            nodes = {m: clusters[m].api_get("/nodes")[0]["capabilities"] for m in MODES}
        finally:
            for cluster in clusters.values():
                cluster.stop()
    result: dict[str, Any] = {
        "machine_busy_before": busy,
        "app": "examples/hello-python (memory_mb 64)",
        "modes": {
            m: {
                "isolation": nodes[m]["isolation"],
                "limits": nodes[m]["limits"],
                "deploy_to_first_200_s": _s(deploys[m]),
                "request_ms": _ms(latency[m]),
            }
            for m in MODES
        },
    }
    write_result("isolation", result)


if __name__ == "__main__":
    main()

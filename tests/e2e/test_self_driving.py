"""The self-driving cluster against real processes: the fire drill and autoscaling.

A drill marks a node's market as crashing; the risk engine must call it
CRITICAL, the controller drain it, and the scheduler move every instance off
it — a stateless app without one failed request through a router, the
stateful ``examples/counter`` with its count. Autoscaling: load through a
router raises an app's instance count, idleness lowers it again.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_core_scenario import Probe
from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _risk(cluster: Cluster, node: str) -> dict[str, Any] | None:
    for assessment in cluster.cli_json("risk")["assessments"]:
        if assessment["node"] == node:
            return dict(assessment)
    return None


def critical_after(cluster: Cluster, node: str) -> float:
    """Seconds from the newest drill signal to the first CRITICAL assessment after it."""
    signals = cluster.api_get(f"/signals?node={node}")
    drilled_at = max(float(s["ts"]) for s in signals if s["source"] == "drill")
    history = cluster.api_get(f"/risk/{node}?limit=50")  # newest first
    became = min(
        float(a["ts"]) for a in history if a["status"] == "CRITICAL" and a["ts"] >= drilled_at
    )
    return became - drilled_at


def _placement(cluster: Cluster, app: str) -> list[str]:
    return sorted(i["node"] for i in cluster.active(app))


def _count(cluster: Cluster, router: str) -> int:
    return int(httpx.get(f"{router}/apps/counter/", timeout=5).json()["count"])


def test_fire_drill_moves_every_instance_off_the_node(cluster: Cluster) -> None:
    cluster.env["AETHER_CONTROLLER_UNDRAIN_AFTER"] = "2"
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")
    cluster.cli_json("deploy", str(EXAMPLES / "hello-python"), "--instances", "2")
    cluster.cli_json("deploy", str(EXAMPLES / "counter"))
    drilled = wait_for(lambda: _placement(cluster, "counter"), 30, "counter ACTIVE")[0]
    safe = "n2" if drilled == "n1" else "n1"
    wait_for(lambda: len(cluster.active("hello-python")) == 2, 30, "hello-python ACTIVE")
    router = cluster.router(safe)
    for _ in range(7):
        assert httpx.post(f"{router}/apps/counter/inc", timeout=5).status_code == 200
    assert _count(cluster, router) == 7

    probe = Probe(f"{router}/apps/hello-python/")
    probe.start()
    try:
        drill = cluster.cli_json("drill", "start", "--node", drilled)
        assert drill["node"] == drilled
        critical = wait_for(
            lambda: (a := _risk(cluster, drilled)) and a["status"] == "CRITICAL" and a,
            10,
            f"{drilled} CRITICAL",
        )
        assert critical["root_cause"] == "Cloud Provider Signal"
        # within 2 s of the drill, measured on the server's own clock
        assert critical_after(cluster, drilled) < 2.0

        wait_for(
            lambda: (
                _placement(cluster, "hello-python") == [safe, safe]
                and _placement(cluster, "counter") == [safe]
            ),
            90,
            f"every instance moved to {safe}",
        )
        time.sleep(1.0)  # keep the load on while the old instances are retired
    finally:
        probe.stop()
    assert probe.failures == [], probe.failures[:5]
    assert probe.ok > 20
    assert _count(cluster, router) == 7  # the count moved with the counter
    assert cluster.node_state(drilled) == "draining"

    decisions = cluster.cli_json("decisions", "--node", drilled)["decisions"]
    drains = [d for d in decisions if d["kind"] == "drain" and d["outcome"] == "applied"]
    assert drains and drains[0]["layer"] == 1
    assert "Cloud Provider Signal" in drains[0]["reason"]

    cluster.cli_json("drill", "stop", "--node", drilled)
    wait_for(lambda: (a := _risk(cluster, drilled)) and a["status"] == "LOW", 10, f"{drilled} LOW")
    wait_for(lambda: cluster.node_state(drilled) == "ready", 30, "the controller's undrain")
    undrains = [
        d
        for d in cluster.cli_json("decisions", "--node", drilled)["decisions"]
        if d["kind"] == "undrain"
    ]
    assert undrains and undrains[0]["outcome"] == "applied"


SLOW_APP = """
import os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/healthz":
            time.sleep(0.25)
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

SLOW_TOML = """
name = "slow"
start = "python3 app.py"
health = "/healthz"
instances = 1

[autoscale]
min = 1
max = 3
metric = "in_flight"
target = 1
scale_up_cooldown = 1
scale_down_cooldown = 3
window = 5
horizon = 0
"""


class Load:
    """``workers`` clients in a loop through a router: ``workers`` calls in flight."""

    def __init__(self, url: str, workers: int) -> None:
        self.url = url
        self.stopping = threading.Event()
        self.failures = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stopping.is_set():
                try:
                    if http.get(self.url).status_code != 200:
                        self.failures += 1
                except httpx.HTTPError:
                    self.failures += 1

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(15)


def _desired(cluster: Cluster, app: str) -> int:
    for row in cluster.cli_json("apps")["apps"]:
        if row["name"] == app:
            return int(row["instances_desired"])
    raise AssertionError(f"{app} is not listed")


def test_load_scales_up_and_idleness_scales_down(cluster: Cluster, tmp_path: Path) -> None:
    app = tmp_path / "slow"
    app.mkdir()
    (app / "app.py").write_text(SLOW_APP)
    (app / "aether.toml").write_text(SLOW_TOML)
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")
    cluster.cli_json("deploy", str(app))
    wait_for(lambda: len(cluster.active("slow")) == 1, 30, "one instance ACTIVE")

    with Load(f"{cluster.router('n1')}/apps/slow/", workers=6):
        wait_for(lambda: len(cluster.active("slow")) == 3, 60, "scaled up to max = 3 ACTIVE")
        assert _desired(cluster, "slow") == 3  # never beyond max

    wait_for(lambda: _desired(cluster, "slow") == 1, 60, "scaled back down to min = 1")
    wait_for(lambda: len(cluster.active("slow")) == 1, 30, "one instance left")

    decisions = cluster.cli_json("decisions", "--app", "slow")["decisions"]
    ups = [
        d
        for d in decisions
        if d["kind"] == "scale" and d["action"]["instances"] > d["action"]["from"]
    ]
    downs = [
        d
        for d in decisions
        if d["kind"] == "scale" and d["action"]["instances"] < d["action"]["from"]
    ]
    assert ups and downs
    assert all(d["layer"] == 1 and d["outcome"] == "applied" for d in ups + downs)
    assert "in_flight" in ups[-1]["reason"]


STEADY_TOML = """
name = "slow"
start = "python3 app.py"
health = "/healthz"
instances = 1

[autoscale]
min = 1
max = 4
metric = "in_flight"
target = 4
scale_up_cooldown = 1
scale_down_cooldown = 3
window = 10
"""


def _scale_changes(cluster: Cluster) -> list[dict[str, object]]:
    return [
        d
        for d in cluster.cli_json("decisions", "--app", "slow")["decisions"]
        if d["kind"] == "scale" and d["outcome"] == "applied"
    ]


def test_steady_load_at_twice_the_target_settles_without_flapping(
    cluster: Cluster, tmp_path: Path
) -> None:
    """8 closed-loop clients against ``target = 4`` once changed the count nine times in
    45 s (1→2→3→2→3…); after settling it may change at most once."""
    app = tmp_path / "slow"
    app.mkdir()
    (app / "app.py").write_text(SLOW_APP)
    (app / "aether.toml").write_text(STEADY_TOML)
    cluster.start_server()
    cluster.start_node("n1")
    cluster.cli_json("deploy", str(app))
    wait_for(lambda: len(cluster.active("slow")) == 1, 30, "one instance ACTIVE")
    with Load(f"{cluster.router('n1')}/apps/slow/", workers=8) as load:
        wait_for(lambda: len(cluster.active("slow")) >= 2, 60, "scaled up under load")
        time.sleep(5)  # settle
        before = {str(d["id"]) for d in _scale_changes(cluster)}
        time.sleep(40)
        after = [d for d in _scale_changes(cluster) if str(d["id"]) not in before]
    assert len(after) <= 1, [d["reason"] for d in after]
    assert load.failures == 0

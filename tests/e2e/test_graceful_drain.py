"""Stopping an instance is a graceful drain: no request in flight is lost.

An app that takes 3 s per request, requests in flight through the routers, and
then each way an instance stops while serving: scale-down, a node drain and a
rollout. Every request must get its 200 — the instance is stopped only after
every router confirmed it sends it nothing new and its open requests finished.
POST is used on purpose: a router never retries a POST it already sent, so a
request the instance dropped would show up as a failure.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

SLOW_APP = """\
import json, os, signal, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INSTANCE = os.environ.get("AETHER_INSTANCE_ID", "local")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path.startswith("/slow"):
            time.sleep(3)
        body = json.dumps({"instance": INSTANCE, "version": os.environ.get("V")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
# like the examples: gone at once on SIGTERM, whatever it is serving
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
server.serve_forever()
"""


def _app(tmp: Path, version: str, instances: int) -> Path:
    app = tmp / f"slow-{version}"
    app.mkdir()
    (app / "app.py").write_text(SLOW_APP)
    (app / "aether.toml").write_text(
        f'name = "slow"\nstart = "python3 app.py"\nhealth = "/healthz"\n'
        f"instances = {instances}\n\n[env]\nV = {version!r}\n"
    )
    return app


def _slow_requests(url: str, n: int) -> concurrent.futures.Future[list[tuple[int, str]]]:
    """Send ``n`` 3-second POSTs at once; the future holds (status, body) of each."""

    def one(_: int) -> tuple[int, str]:
        try:
            r = httpx.post(url, content=b"x", timeout=60)
            return r.status_code, r.text
        except httpx.HTTPError as exc:
            return 0, repr(exc)

    def all_of() -> list[tuple[int, str]]:
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            return list(pool.map(one, range(n)))

    return concurrent.futures.ThreadPoolExecutor(1).submit(all_of)


def _failures(results: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return [r for r in results if r[0] != 200]


def _nodes_of(cluster: Cluster) -> dict[str, int]:
    counts: dict[str, int] = {}
    for inst in cluster.active("slow"):
        counts[inst["node"]] = counts.get(inst["node"], 0) + 1
    return counts


def test_scale_down_loses_no_request_in_flight(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    cluster.cli_json("deploy", str(_app(tmp_path, "1", 2)))
    wait_for(lambda: len(cluster.active("slow")) == 2, 30, "two instances ACTIVE")
    pending = _slow_requests(f"{cluster.router('n1')}/apps/slow/slow", 4)
    time.sleep(0.7)  # every request is now inside an instance
    cluster.cli_json("scale", "slow=1")
    results = pending.result(timeout=60)
    assert _failures(results) == [], results
    wait_for(lambda: len(cluster.active("slow")) == 1, 30, "one instance left")


def test_drain_loses_no_request_in_flight(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")
    cluster.cli_json("deploy", str(_app(tmp_path, "1", 2)))
    wait_for(lambda: _nodes_of(cluster) == {"n1": 1, "n2": 1}, 30, "one instance per node")
    # through both routers: each must stop sending to n2's instance, and n2's
    # instance must finish what either of them sent
    first = _slow_requests(f"{cluster.router('n1')}/apps/slow/slow", 4)
    second = _slow_requests(f"{cluster.router('n2')}/apps/slow/slow", 4)
    time.sleep(0.7)
    cluster.cli("drain", "n2")
    results = first.result(timeout=60) + second.result(timeout=60)
    assert _failures(results) == [], results
    wait_for(lambda: _nodes_of(cluster) == {"n1": 2}, 60, "both instances on n1")


def test_rollout_loses_no_request_in_flight(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    cluster.cli_json("deploy", str(_app(tmp_path, "1", 2)))
    wait_for(lambda: len(cluster.active("slow")) == 2, 30, "two instances ACTIVE")
    url = f"{cluster.router('n1')}/apps/slow/slow"
    pending = [_slow_requests(url, 4)]
    time.sleep(0.7)
    deployed = cluster.cli_json("deploy", str(_app(tmp_path, "2", 2)), "--no-wait")
    for _ in range(3):  # keep requests in flight while the rollout runs
        pending.append(_slow_requests(url, 2))
        time.sleep(1.0)
    results = [r for p in pending for r in p.result(timeout=90)]
    assert _failures(results) == [], results
    assert deployed["version"] == 2
    wait_for(lambda: {i["version"] for i in cluster.active("slow")} == {2}, 60, "only v2 serving")


class SlowLoad:
    """``workers`` clients each sending 3-second GETs in a loop through one router."""

    def __init__(self, url: str, workers: int) -> None:
        self.url = url
        self.stopping = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self) -> None:
        with httpx.Client(timeout=60) as http:
            while not self.stopping.is_set():
                try:
                    response = http.get(self.url)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if response.status_code == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{response.status_code} {response.text}")

    def __enter__(self) -> SlowLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()  # each client finishes the request it is in
        for thread in self.threads:
            thread.join(60)


def _chaos_app(tmp: Path, version: str) -> Path:
    app = _app(tmp, version, 2)
    toml = (app / "aether.toml").read_text()
    (app / "aether.toml").write_text(
        toml + '\n[autoscale]\nmin = 2\nmax = 4\nmetric = "in_flight"\ntarget = 2\n'
        "scale_up_cooldown = 1\nscale_down_cooldown = 2\nscale_down_window = 2\n"
        "window = 5\nhorizon = 0\n"
    )
    return app


def test_a_chaos_run_under_slow_requests_loses_none(cluster: Cluster, tmp_path: Path) -> None:
    """Drain, rollout, autoscale up and down, scale-down and a node killed with kill -9,
    one after another, with 3-second requests in flight through a router the whole time."""
    cluster.start_server()
    for name in ("n1", "n2", "n3"):
        cluster.start_node(name)
    cluster.cli_json("deploy", str(_chaos_app(tmp_path, "1")))
    wait_for(lambda: len(cluster.active("slow")) >= 2, 30, "two instances ACTIVE")
    url = f"{cluster.router('n1')}/apps/slow/slow"
    with SlowLoad(url, 3) as base:
        with SlowLoad(url, 6) as burst:  # 9 in flight against target 2: autoscale up
            wait_for(lambda: len(cluster.active("slow")) == 4, 60, "autoscaled up to 4")
            busiest = max(("n2", "n3"), key=lambda n: _nodes_of(cluster).get(n, 0))
            cluster.cli("drain", busiest, "--wait", "--timeout", "60")
            cluster.cli("undrain", busiest)
            cluster.cli_json("deploy", str(_chaos_app(tmp_path, "2")))
            wait_for(
                lambda: {i["version"] for i in cluster.active("slow")} == {2}, 60, "rolled out"
            )
        # the burst ended: 3 in flight against target 2 scales down
        wait_for(lambda: len(cluster.active("slow")) <= 3, 60, "autoscaled down")
        victim = next(n for n in ("n2", "n3") if _nodes_of(cluster).get(n))
        cluster.kill_node(victim)
        wait_for(
            lambda: victim not in _nodes_of(cluster) and len(cluster.active("slow")) >= 2,
            60,
            "replaced the killed node's instances",
        )
        time.sleep(4)  # requests that were in flight through the kill finish
    assert base.failures == [] and burst.failures == [], base.failures + burst.failures
    assert base.ok + burst.ok >= 10  # requests did flow (3 s each) through every step

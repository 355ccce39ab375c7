"""The console: page loads, change-to-screen over the event stream, server CPU per console.

    .venv/bin/python -m bench.console_bench [--quick] [--apps 100] [--nodes 50]
        [--tasks 10000] [--loads 20] [--samples 30] [--cpu-seconds 60]
        [--consoles 10] [--pages /ui/,/ui/nodes,/ui/apps/{app},/ui/settings]
        [--cpu-page /ui/]

A real ``aether server`` process (its own data directory, SQLite stores, default
settings, ``AETHER_LEASE_TTL=3``) seeded the way a user would: ``--nodes``
simulated nodes join with the join token and, in a separate fleet process, each
registers, heartbeats and pushes a realistic telemetry sample every second with
its own credential (bench/telemetry_bench.py's body), and plays its instances'
lifecycle (LOAD → LOADED, ACTIVATE → ACTIVE, ...); ``--apps`` apps are deployed
with one instance each (one small real artifact); ``--tasks`` tasks
(``vm:create``, left queued: no node claims them) are submitted over the API.

Then, with Debian's chromium driven by Playwright (tests/support/browser.py),
signed in with the admin token:

- **Page load**: ``--loads`` navigations of each of ``--pages`` (``{app}`` is an
  app's name; a page this build does not have is reported as missing), each
  timed until ``load`` and, on a page that listens to the event stream, until
  it is connected (``body[data-live=live]``); also the HTML alone
  (``responseEnd`` of the navigation). p50/p95.
- **Change to screen**: the overview open; ``--samples`` times, scale one app
  from 1 to 2 instances through the API and time until the page shows ``/ 2``
  in that app's row (the event reaches the page, which re-reads the region).
- **CPU per console**: the server process's CPU time (``/proc/PID/stat``) over
  ``--cpu-seconds`` with no console open, then with ``--consoles`` browser
  contexts on ``--cpu-page`` (connected to the stream), while the fleet pushes
  1 Hz telemetry. The difference per console as % of one core.

Everything shares one machine (the browser, the fleet, the server, and other
work on it): the figures are upper bounds for a server with a machine of its
own. Results: bench/results/console.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import io
import json
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO, machine_busy, percentile, write_result
from bench.telemetry_bench import Server, _cpu_seconds, node_template
from tests.support.waiting import wait_for

RESULT_NAME = "console"
PAGE_LOAD_AIM_MS = 1000.0
CHANGE_AIM_MS = 2000.0
CPU_AIM_PERCENT = 10.0  # of one core, for 10 consoles
LIVE = (
    "() => { const b = document.body; if (!b) return false;"
    " return b.dataset.live === 'live' || !(b.dataset.events || '').trim(); }"
)


# -- the fleet: simulated nodes in their own process -------------------------------------


async def _node_life(url: str, node: str, token: str, stop_at: float) -> None:
    """Register, then every second heartbeat and push one telemetry sample."""
    from aether.client import ApiClient
    from aether.model.api import RegisterIn
    from aether.model.cluster import NodeCapabilities

    rng = random.Random(node)
    template = node_template(node, rng).decode()
    caps = NodeCapabilities(cpus=8.0, memory_mb=32768, drivers=["process"])
    body = RegisterIn(id=node, capabilities=caps, router_url="http://127.0.0.1:1")
    headers = {"Content-Type": "application/json"}
    async with ApiClient(url, token) as client:
        lease = (await client.register(body)).lease_id
        seq, next_at = 0, time.time() + rng.random()
        while time.time() < stop_at:
            await asyncio.sleep(max(0.0, next_at - time.time()))
            next_at += 1.0
            try:
                await client.heartbeat(node, lease)
                push = template % {"ts": repr(time.time()), "seq": seq}
                await client.request(
                    "POST", f"/api/v1/nodes/{node}/metrics", content=push, headers=headers
                )
            except Exception:  # a lost lease: register again, as a node does
                with contextlib.suppress(Exception):
                    lease = (await client.register(body)).lease_id
            seq += 1


async def _step(client: Any, key: str, command: str, state: str | None) -> None:
    """One instance's next report for the leader's command (a real node's runner, briefly)."""
    if command == "LOAD" and state not in ("LOADED", "FAILED"):
        await client.report(key, "LOADING")
        await client.report(key, "LOADED")
    elif command == "ACTIVATE" and state != "ACTIVE":
        if state not in ("LOADED", "ACTIVATING"):
            await client.report(key, "LOADING")
            await client.report(key, "LOADED")
        await client.report(key, "ACTIVATING")
        await client.report(key, "ACTIVE", url="http://127.0.0.1:9")
    elif command == "DEACTIVATE" and state == "ACTIVE":
        await client.report(key, "DEACTIVATING")
        await client.report(key, "LOADED")
    elif command == "UNLOAD":
        with contextlib.suppress(Exception):
            await client.report(key, "UNLOADING")
        await client.unloaded(key)


async def _instances_life(url: str, admin: str, tokens: dict[str, str], stop_at: float) -> None:
    """Follow every instance's command (read from the API every 0.5 s) and report states."""
    from aether.client import ApiClient

    clients = {node: ApiClient(url, token) for node, token in tokens.items()}
    async with ApiClient(url, admin) as reader:
        while time.time() < stop_at:
            with contextlib.suppress(Exception):
                found = await reader.json("GET", "/api/v1/instances")
                steps = [
                    _step(clients[i["node"]], i["key"], i["command"], i["state"])
                    for i in found
                    if i["node"] in clients
                ]
                await asyncio.gather(*steps, return_exceptions=True)
            await asyncio.sleep(0.5)
    for client in clients.values():
        await client.close()


async def _fleet(url: str, admin: str, tokens: dict[str, str], seconds: float) -> None:
    stop_at = time.time() + seconds
    lives = [_node_life(url, node, token, stop_at) for node, token in tokens.items()]
    await asyncio.gather(*lives, _instances_life(url, admin, tokens, stop_at))


def fleet_main(args: argparse.Namespace) -> None:
    tokens: dict[str, str] = json.loads(Path(args.credentials).read_text())
    asyncio.run(_fleet(args.url, args.admin_token, tokens, args.seconds))


# -- seeding -----------------------------------------------------------------------------


def _artifact() -> bytes:
    """A tiny real app archive (gzip'd tar, one file), the same bytes every run."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = b"print('hello from the console bench')\n"
        info = tarfile.TarInfo("app.py")
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def app_name(i: int) -> str:
    return f"shop-{i:03d}"


def deploy_apps(server: Server, count: int) -> None:
    import hashlib

    data = _artifact()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    auth = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as http:
        stored = http.post(
            "/api/v1/artifacts", content=data, headers={"X-Aether-Artifact-Digest": digest}
        )
        assert stored.status_code in (200, 201), stored.text
        for i in range(count):
            app = app_name(i)
            spec = {"name": app, "start": "python3 app.py"}
            made = http.post(
                f"/api/v1/apps/{app}/deployments",
                json={"digest": digest, "spec": spec, "instances": 1},
            )
            assert made.status_code == 201, made.text


async def _submit_tasks(url: str, token: str, count: int, in_flight: int = 32) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    gate = asyncio.Semaphore(in_flight)
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=60) as http:

        async def one(i: int) -> None:
            async with gate:
                body = {"type": "vm:create", "payload": {"name": f"bench-{i}"}}
                answer = await http.post("/api/v1/tasks", json=body)
                assert answer.status_code == 201, answer.text

        await asyncio.gather(*(one(i) for i in range(count)))


def _get(server: Server, path: str) -> Any:
    auth = {"Authorization": f"Bearer {server.admin_token}"}
    answer = httpx.get(f"{server.url}{path}", headers=auth, timeout=60)
    answer.raise_for_status()
    return answer.json()


def seed(
    server: Server, args: argparse.Namespace, root: Path
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    started = time.monotonic()
    credentials = server.join(args.nodes)
    fleet = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.console_bench",
            "fleet",
            "--url",
            server.url,
            "--admin-token",
            server.admin_token,
            "--credentials",
            str(credentials),
            "--seconds",
            "3600",
        ],
        cwd=REPO,
        stdout=(root / "fleet.log").open("ab"),
        stderr=subprocess.STDOUT,
    )

    def all_ready() -> bool:
        nodes = _get(server, "/api/v1/nodes")
        return sum(n["state"] == "ready" for n in nodes) >= args.nodes

    wait_for(all_ready, 120, f"{args.nodes} nodes ready")
    deploy_apps(server, args.apps)

    def all_active() -> bool:
        apps = _get(server, "/api/v1/apps")
        return sum(a["instances_active"] >= 1 for a in apps) >= args.apps

    wait_for(all_active, 300, f"{args.apps} apps active")
    asyncio.run(_submit_tasks(server.url, server.admin_token, args.tasks))
    stats = _get(server, "/api/v1/tasks/stats")
    return fleet, {
        "apps": len(_get(server, "/api/v1/apps")),
        "nodes": len(_get(server, "/api/v1/nodes")),
        "tasks": sum(stats.values()),
        "seed_seconds": round(time.monotonic() - started, 1),
    }


# -- measuring in the browser ----------------------------------------------------------------


def _ms(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 1),
        "p95_ms": round(percentile(values, 95) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def page_loads(page: Any, base: str, path: str, loads: int) -> dict[str, Any]:
    """``loads`` navigations of ``path``: until load (+ the stream), and the HTML alone."""
    first = page.goto(f"{base}{path}", wait_until="load")
    if first is None or first.status >= 400:
        return {"missing": True, "status": first.status if first else None}
    page.wait_for_function(LIVE, timeout=15_000)
    total: list[float] = []
    html: list[float] = []
    for _ in range(loads):
        started = time.perf_counter()
        page.goto(f"{base}{path}", wait_until="load")
        page.wait_for_function(LIVE, timeout=15_000)
        total.append(time.perf_counter() - started)
        end = page.evaluate("performance.getEntriesByType('navigation')[0].responseEnd")
        html.append(float(end) / 1000)
    return {"load_and_live": _ms(total), "html": _ms(html), "bytes": len(page.content())}


def change_to_screen(page: Any, server: Server, samples: int) -> dict[str, Any]:
    """Scale an app 1 → 2 through the API; time until the open overview shows it."""
    page.goto(f"{server.url}/ui/", wait_until="load")
    page.wait_for_function(LIVE, timeout=15_000)
    auth = {"Authorization": f"Bearer {server.admin_token}"}
    times: list[float] = []
    with httpx.Client(base_url=server.url, headers=auth, timeout=30) as http:
        for i in range(samples):
            app = app_name(i)
            cell = f'tr[data-app="{app}"] [data-testid="app-instances"]'
            shown = (
                f"() => {{ const c = document.querySelector('{cell}');"
                " return !!c && c.textContent.trim().endsWith('/ 2'); }"
            )
            time.sleep(0.5)  # let the previous change's refreshes settle
            started = time.perf_counter()
            http.post(f"/api/v1/apps/{app}/scale", json={"instances": 2}).raise_for_status()
            page.wait_for_function(shown, timeout=30_000, polling=10)
            times.append(time.perf_counter() - started)
    return _ms(times)


def _server_cpu(server: Server, seconds: float) -> float:
    """The server's CPU over ``seconds`` as a fraction of one core."""
    before, wall = _cpu_seconds(server.proc.pid), time.monotonic()
    time.sleep(seconds)
    return (_cpu_seconds(server.proc.pid) - before) / (time.monotonic() - wall)


def cpu_per_console(
    browser: Any, state: dict[str, Any], server: Server, args: argparse.Namespace
) -> dict[str, Any]:
    time.sleep(5)  # the seeding's and the page loads' work done
    idle = _server_cpu(server, args.cpu_seconds)
    contexts = [browser.new_context(storage_state=state) for _ in range(args.consoles)]
    try:
        for context in contexts:
            page = context.new_page()
            page.goto(f"{server.url}{args.cpu_page}", wait_until="load")
            page.wait_for_function(LIVE, timeout=30_000)
        time.sleep(5)
        busy = _server_cpu(server, args.cpu_seconds)
    finally:
        for context in contexts:
            context.close()
    per = (busy - idle) / args.consoles
    return {
        "page": args.cpu_page,
        "consoles": args.consoles,
        "seconds": args.cpu_seconds,
        "server_cpu_no_console_pct": round(idle * 100, 2),
        "server_cpu_with_consoles_pct": round(busy * 100, 2),
        "per_console_pct_of_one_core": round(per * 100, 2),
        "all_consoles_pct_of_one_core": round((busy - idle) * 100, 2),
    }


OVERVIEW_EVENTS = (
    "node_joined node_lost node_drained node_undrained leader_changed instance_state "
    "instance_removed blueprint_changed deployment decision risk_changed task_state migration"
)


async def _streams(url: str, token: str, n: int, seconds: float) -> dict[str, int]:
    """``n`` plain event streams (the overview's types) for ``seconds``: events by type."""
    params = [("type", t) for t in OVERVIEW_EVENTS.split()]
    seen: dict[str, int] = {}
    auth = {"Authorization": f"Bearer {token}"}

    async def one(http: httpx.AsyncClient) -> None:
        async with http.stream("GET", "/api/v1/events", params=params) as answer:
            async for line in answer.aiter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                    seen[kind] = seen.get(kind, 0) + 1

    timeout = httpx.Timeout(seconds + 30)
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=timeout) as http:
        tasks = [asyncio.create_task(one(http)) for _ in range(n)]
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return seen


def stream_cost(server: Server, n: int, seconds: float) -> dict[str, Any]:
    """The server's CPU with ``n`` bare event streams and no page: the stream's own share."""
    idle = _server_cpu(server, seconds)
    revision = _get(server, "/api/v1/status")["revision"]
    before, wall = _cpu_seconds(server.proc.pid), time.monotonic()
    seen = asyncio.run(_streams(server.url, server.admin_token, n, seconds))
    elapsed = time.monotonic() - wall
    busy = (_cpu_seconds(server.proc.pid) - before) / elapsed
    revisions = (_get(server, "/api/v1/status")["revision"] - revision) / elapsed
    return {
        "streams": n,
        "seconds": seconds,
        "server_cpu_no_stream_pct": round(idle * 100, 2),
        "server_cpu_with_streams_pct": round(busy * 100, 2),
        "per_stream_pct_of_one_core": round((busy - idle) / n * 100, 2),
        "store_revisions_per_second": round(revisions, 1),
        "events_per_stream_per_minute": {
            k: round(v / n / seconds * 60, 1) for k, v in sorted(seen.items())
        },
    }


@contextlib.contextmanager
def _server(root: Path) -> Iterator[Server]:
    server = Server(root)
    try:
        yield server
    finally:
        server.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.support.browser import chromium, new_console, sign_in

    root = Path(tempfile.mkdtemp(prefix="aether-console-bench-"))
    with _server(root) as server:
        fleet, seeded = seed(server, args, root)
        print(f"seeded: {seeded}", flush=True)
        try:
            with chromium() as browser:
                context = new_console(browser)
                page = context.new_page()
                sign_in(page, server.url, server.admin_token)
                state = context.storage_state()
                busy = machine_busy()
                loads = {
                    path.format(app=app_name(0)): page_loads(
                        page, server.url, path.format(app=app_name(0)), args.loads
                    )
                    for path in args.pages.split(",")
                }
                print(f"page loads: {json.dumps(loads)}", flush=True)
                change = change_to_screen(page, server, args.samples)
                print(f"change to screen: {change}", flush=True)
                context.close()
                cpu = cpu_per_console(browser, state, server, args)
                print(f"cpu: {cpu}", flush=True)
            streams = stream_cost(server, args.consoles, args.cpu_seconds)
            print(f"bare streams: {streams}", flush=True)
        finally:
            fleet.terminate()
            fleet.wait(timeout=30)
    return {
        "seed": seeded,
        "machine_busy_before": round(busy, 3),
        "page_load": loads,
        "change_to_screen": change,
        "cpu": cpu,
        "bare_streams": streams,
        "aims": _aims(loads, change, cpu),
    }


def _aims(loads: dict[str, Any], change: dict[str, Any], cpu: dict[str, Any]) -> dict[str, Any]:
    measured = {p: r for p, r in loads.items() if not r.get("missing")}
    return {
        "page_refresh_p95_under_1s": {
            p: r["load_and_live"]["p95_ms"] < PAGE_LOAD_AIM_MS for p, r in measured.items()
        },
        "change_to_screen_p95_under_2s": change.get("p95_ms", 1e9) < CHANGE_AIM_MS,
        "ten_consoles_under_10pct_of_a_core": cpu["per_console_pct_of_one_core"] * 10
        < CPU_AIM_PERCENT,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command")
    fleet = sub.add_parser("fleet", help="(internal) the simulated nodes")
    fleet.add_argument("--url", required=True)
    fleet.add_argument("--admin-token", required=True)
    fleet.add_argument("--credentials", required=True)
    fleet.add_argument("--seconds", type=float, default=3600)
    parser.add_argument("--quick", action="store_true", help="2,000 tasks, fewer samples, 20 s")
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--cpu-seconds", type=float, default=60.0)
    parser.add_argument("--consoles", type=int, default=10)
    parser.add_argument("--pages", default="/ui/,/ui/nodes,/ui/apps/{app},/ui/settings")
    parser.add_argument("--cpu-page", default="/ui/")
    args = parser.parse_args()
    if args.command == "fleet":
        fleet_main(args)
        return
    if args.quick:
        args.tasks, args.loads, args.samples, args.cpu_seconds = 2000, 8, 10, 20.0
    result = run(args)
    result["options"] = {
        k: v for k, v in vars(args).items() if k not in ("command",) and v is not None
    }
    write_result(RESULT_NAME, result)


if __name__ == "__main__":
    main()

"""Slice calls: a no-op entry point over ``wire.Connection``, and handle to handle.

    .venv/bin/python -m bench.slices_bench [--duration 10] [--warmup 2] [--in-flight 1,64]

Two real host processes (``python -m aether.slices.host``) on loopback: ``noop``
(one entry point that returns None) and ``relay`` (one entry point that calls
``noop`` through ``slices.get("noop")``, after its table was pushed with
``$endpoints``). One client process keeps N calls in flight on one multiplexed
``wire.Connection`` for ``--duration`` seconds per case:

- ``direct``: client → noop (one frame each way);
- ``handle``: client → relay → (handle) → noop: two hops, as a slice calling
  another slice sees it plus the client's own hop;
- ``http``: client → HTTP → a node's router (``node.router.Router``, in its own
  process, its table holding the noop host) → noop: ``POST /slices/noop/noop``.

The peer, Ray Serve (``pip install "ray[serve]"``, the ``bench`` extra), in the same
run on the same machine (skipped with ``--no-ray``): the same two deployments, a
``Noop`` and a ``Relay`` holding a ``DeploymentHandle`` to it (one replica each,
no CPU reserved — three replicas on 2 cores would never all start — and
``max_ongoing_requests=128``: Ray's default of 5 queues 64 calls in flight), driven from the
driver process the same way — ``direct`` (``noop_handle.noop.remote()``),
``handle`` (``relay_handle.remote()``: driver → relay → noop), and ``http``
(``POST`` to Serve's HTTP proxy → noop). HTTP load comes from one aiohttp client
(keep-alive connections) in both cases.

Per case: calls/s, and the latency of each call (p50/p99/max, ms) as the client
sees it. The client, the hosts and anything else share the machine's CPUs, so at
64 in flight the figure is bounded by the client's and hosts' single event loops.
Results: bench/results/slices.json.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aether.ports import free_port
from aether.slices import wire
from bench.common import machine_busy, percentile, write_result
from tests.slices.hosts import KEY, Host, start_host, write_package

RESULT_NAME = "slices"

SOURCE = """
    from aether import slices

    @slices.slice(name="noop")
    class Noop:
        @slices.entry
        async def noop(self) -> None:
            return None

    @slices.slice(name="relay")
    class Relay:
        def __init__(self) -> None:
            self.noop = slices.get("noop")

        @slices.entry
        async def relay(self) -> None:
            await self.noop.noop()
"""


async def _drive(
    call: Callable[[], Awaitable[object]], in_flight: int, duration: float, warmup: float
) -> dict[str, Any]:
    """``in_flight`` loops of ``call`` for ``warmup`` + ``duration`` seconds; the figures
    of the calls that started after the warm-up."""
    latencies: list[float] = []
    measuring = False
    stop_at = time.perf_counter() + warmup + duration

    async def worker() -> None:
        while (now := time.perf_counter()) < stop_at:
            await call()
            if measuring:
                latencies.append(time.perf_counter() - now)

    workers = [asyncio.create_task(worker()) for _ in range(in_flight)]
    await asyncio.sleep(warmup)
    measuring = True
    started = time.perf_counter()
    await asyncio.gather(*workers)
    return _figures(in_flight, latencies, time.perf_counter() - started)


async def run_case(
    port: int, entry: str, in_flight: int, duration: float, warmup: float
) -> dict[str, Any]:
    """Calls of ``entry`` over one multiplexed ``wire.Connection``."""
    connection = await wire.Connection.open("127.0.0.1", port)
    try:
        return await _drive(lambda: connection.call(entry), in_flight, duration, warmup)
    finally:
        await connection.close()


async def run_http_case(url: str, in_flight: int, duration: float, warmup: float) -> dict[str, Any]:
    """``in_flight`` POSTs at a time to ``url`` from one aiohttp client (keep-alive)."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as http:

        async def post() -> None:
            async with http.post(url, json={}) as answer:
                await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"{url}: HTTP {answer.status}")

        return await _drive(post, in_flight, duration, warmup)


def _figures(in_flight: int, latencies: list[float], elapsed: float) -> dict[str, Any]:
    ms = [x * 1000 for x in latencies]
    return {
        "in_flight": in_flight,
        "calls": len(ms),
        "calls_per_s": round(len(ms) / elapsed, 1),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3) if ms else None,
    }


def _serve_router(port: int, noop_url: str) -> None:
    """A node's router on ``port`` whose table holds the noop host (a child process)."""
    from aether.model.cluster import Endpoint
    from aether.node.router import Router

    async def serve() -> None:
        router = Router("127.0.0.1", port)
        router.node = "bench"
        schema = {"params": {}, "returns": {}, "idempotent": False, "batch": None}
        endpoint = Endpoint(
            app="noop", entry="noop", node="bench", n=1, version=1, url=noop_url, schema=schema
        )
        router.update([endpoint], apps=["noop"])
        await router.start()
        await asyncio.Event().wait()

    asyncio.run(serve())


def _wait_http(url: str, timeout: float = 60) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(url, data=b"{}", method="POST")
            request.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(request, timeout=5):
                return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


RAY_SOURCE = """
from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=128)
class Noop:
    async def __call__(self, request=None):
        return None

    async def noop(self):
        return None


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=128)
class Relay:
    def __init__(self, noop):
        self.noop = noop

    async def __call__(self, request=None):
        await self.noop.noop.remote()
"""


def ray_cases(levels: list[int], duration: float, warmup: float) -> dict[str, Any]:
    """Ray Serve's figures for the same cases (one replica each, local cluster)."""
    import importlib.util
    import sys

    import ray
    from ray import serve

    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
        module = Path(tmp) / "ray_bench_apps.py"
        module.write_text(RAY_SOURCE)
        sys.path.insert(0, tmp)
        spec = importlib.util.spec_from_file_location("ray_bench_apps", module)
        assert spec is not None and spec.loader is not None
        apps = importlib.util.module_from_spec(spec)
        sys.modules["ray_bench_apps"] = apps
        spec.loader.exec_module(apps)
        port = free_port()
        ray.init(
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": tmp}},
        )
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            noop = serve.run(apps.Noop.bind(), name="noop", route_prefix="/noop")
            relay = serve.run(
                apps.Relay.bind(apps.Noop.bind()), name="relay", route_prefix="/relay"
            )
            _wait_http(f"http://127.0.0.1:{port}/noop")
            cases: dict[str, list[dict[str, Any]]] = {"direct": [], "handle": [], "http": []}
            for level in levels:
                cases["direct"].append(
                    asyncio.run(_drive(noop.noop.remote, level, duration, warmup))
                )
                cases["handle"].append(asyncio.run(_drive(relay.remote, level, duration, warmup)))
                cases["http"].append(
                    asyncio.run(
                        run_http_case(f"http://127.0.0.1:{port}/noop", level, duration, warmup)
                    )
                )
            return {"version": ray.__version__, "cases": cases}
        finally:
            serve.shutdown()
            ray.shutdown()


async def push_table(relay: Host, noop: Host) -> None:
    connection = await wire.Connection.open("127.0.0.1", relay.port)
    try:
        item = {"url": noop.url, "node": "bench", "n": 1}
        await connection.call(
            "$endpoints", kwargs={"table": {"noop": {"noop": [item]}}, "node": "bench"}, key=KEY
        )
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--in-flight", default="1,64")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Serve peer")
    options = parser.parse_args()
    levels = [int(x) for x in options.in_flight.split(",")]
    with tempfile.TemporaryDirectory(prefix="slices-bench-") as tmp:
        root = Path(tmp)
        write_package(root, "benchslice", SOURCE)
        noop = start_host(root, "benchslice.slice:Noop")
        relay = start_host(root, "benchslice.slice:Relay")
        router_port = free_port()
        router = multiprocessing.get_context("spawn").Process(
            target=_serve_router, args=(router_port, noop.url), daemon=True
        )
        router.start()
        try:
            asyncio.run(push_table(relay, noop))
            _wait_http(f"http://127.0.0.1:{router_port}/slices/noop/noop")
            busy_before = machine_busy(1.0)
            cases: dict[str, list[dict[str, Any]]] = {"direct": [], "handle": [], "http": []}
            for level in levels:
                cases["direct"].append(
                    asyncio.run(
                        run_case(noop.port, "noop", level, options.duration, options.warmup)
                    )
                )
                cases["handle"].append(
                    asyncio.run(
                        run_case(relay.port, "relay", level, options.duration, options.warmup)
                    )
                )
                url = f"http://127.0.0.1:{router_port}/slices/noop/noop"
                cases["http"].append(
                    asyncio.run(run_http_case(url, level, options.duration, options.warmup))
                )
        finally:
            router.terminate()
            router.join(10)
            for host in (relay, noop):
                host.stop()
    ray = None if options.no_ray else ray_cases(levels, options.duration, options.warmup)
    ratios = {}
    if ray is not None:
        for case, rows in cases.items():
            for ours, theirs in zip(rows, ray["cases"][case], strict=True):
                key = f"{case}_{ours['in_flight']}"
                ratios[key] = {
                    "throughput_vs_ray": round(ours["calls_per_s"] / theirs["calls_per_s"], 2),
                    "p50_ms": [ours["p50_ms"], theirs["p50_ms"]],
                }
    write_result(
        RESULT_NAME,
        {
            "duration_s": options.duration,
            "machine_busy_before": round(busy_before, 3),
            "cases": cases,
            "ray_serve": ray,
            "ratios_aether_vs_ray": ratios,
            "goals": {
                "handle_p50_under_1ms": cases["handle"][0]["p50_ms"] < 1.0,
                "throughput_at_least_ray": bool(ratios)
                and all(r["throughput_vs_ray"] >= 1.0 for r in ratios.values()),
            },
        },
    )


if __name__ == "__main__":
    main()

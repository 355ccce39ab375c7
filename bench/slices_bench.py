"""Slice calls: a no-op entry point over ``wire.Connection``, and handle to handle.

    .venv/bin/python -m bench.slices_bench [--duration 10] [--warmup 2] [--in-flight 1,64]

Two real host processes (``python -m aether.slices.host``) on loopback: ``noop``
(one entry point that returns None) and ``relay`` (one entry point that calls
``noop`` through ``slices.get("noop")``, after its table was pushed with
``$endpoints``). One client process keeps N calls in flight on one multiplexed
``wire.Connection`` for ``--duration`` seconds per case:

- ``direct``: client → noop (one frame each way);
- ``handle``: client → relay → (handle) → noop: two hops, as a slice calling
  another slice sees it plus the client's own hop.

Per case: calls/s, and the latency of each call (p50/p99/max, ms) as the client
sees it. The client, the hosts and anything else share the machine's CPUs, so at
64 in flight the figure is bounded by the client's and hosts' single event loops.
Results: bench/results/slices.json.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

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


async def run_case(
    port: int, entry: str, in_flight: int, duration: float, warmup: float
) -> dict[str, Any]:
    connection = await wire.Connection.open("127.0.0.1", port)
    latencies: list[float] = []
    measuring = False
    stop_at = time.perf_counter() + warmup + duration

    async def worker() -> None:
        while (now := time.perf_counter()) < stop_at:
            await connection.call(entry)
            if measuring:
                latencies.append(time.perf_counter() - now)

    try:
        workers = [asyncio.create_task(worker()) for _ in range(in_flight)]
        await asyncio.sleep(warmup)
        measuring = True
        started = time.perf_counter()
        await asyncio.gather(*workers)
        elapsed = time.perf_counter() - started
    finally:
        await connection.close()
    ms = [x * 1000 for x in latencies]
    return {
        "in_flight": in_flight,
        "calls": len(ms),
        "calls_per_s": round(len(ms) / elapsed, 1),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3) if ms else None,
    }


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
    options = parser.parse_args()
    levels = [int(x) for x in options.in_flight.split(",")]
    with tempfile.TemporaryDirectory(prefix="slices-bench-") as tmp:
        root = Path(tmp)
        write_package(root, "benchslice", SOURCE)
        noop = start_host(root, "benchslice.slice:Noop")
        relay = start_host(root, "benchslice.slice:Relay")
        try:
            asyncio.run(push_table(relay, noop))
            busy_before = machine_busy(1.0)
            cases: dict[str, list[dict[str, Any]]] = {"direct": [], "handle": []}
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
        finally:
            for host in (relay, noop):
                host.stop()
    write_result(
        RESULT_NAME,
        {
            "duration_s": options.duration,
            "machine_busy_before": round(busy_before, 3),
            "cases": cases,
        },
    )


if __name__ == "__main__":
    main()

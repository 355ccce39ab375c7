"""The node's metrics collector against real processes, /proc and a real router."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from aether.model.cluster import Endpoint
from aether.node.router import Router
from aether.node.telemetry import InstanceProcess, MachineReader, TelemetryCollector
from aether.ports import free_port

# a shell whose child burns CPU: the shell itself stays idle, so CPU seen on the
# instance proves the whole process tree is measured
BURN_IN_CHILD = f"{sys.executable} -c 'while True: pass' & wait"
HOLD_64_MB = f"{sys.executable} -c 'import time; x = b\"x\" * (64 << 20); time.sleep(120)'"


def spawn(command: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["/bin/sh", "-c", command], start_new_session=True)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def instance(pid: int, n: int = 0, app: str = "burn", restarts: int = 0) -> InstanceProcess:
    return InstanceProcess(
        key=f"instances/n1/{app}@1/{n}", app=app, version=1, n=n, pid=pid, restarts=restarts
    )


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_machine_figures(tmp_path: Path) -> None:
    collector = TelemetryCollector("n1", tmp_path, interval=2.0)
    first = collector.collect()
    time.sleep(0.2)
    second = collector.collect()
    for update in (first, second):
        assert update.node == "n1"
        assert 0.0 <= update.cpu <= 1.0
        assert 0 < update.memory_used_mb < update.memory_total_mb
        assert 0 < update.disk_used_mb <= update.disk_total_mb
        assert update.net_rx_bytes >= 0 and update.net_tx_bytes >= 0
        assert update.instances == [] and update.endpoints == []
    assert (first.seq, second.seq) == (0, 1)
    assert first.interval == 2.0  # the first update covers the configured interval
    assert 0.15 < second.interval < 5  # later ones: the time since the previous
    assert second.ts >= first.ts


def test_memory_matches_meminfo() -> None:
    used, total = MachineReader().memory_mb()
    meminfo = {
        line.split(":")[0]: int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
    }
    assert total == meminfo["MemTotal"] / 1024
    assert used == pytest.approx((meminfo["MemTotal"] - meminfo["MemAvailable"]) / 1024, rel=0.1)


def test_instance_cpu_counts_the_whole_process_tree(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    burner = spawn(BURN_IN_CHILD)
    procs.append(burner)
    collector = TelemetryCollector("n1", tmp_path)
    inst = instance(burner.pid, restarts=3)
    wait_until(lambda: len(_tree(burner.pid)) > 1)  # the shell started its child
    collector.collect([inst])  # first sight: the average over the process's lifetime
    time.sleep(0.5)
    (measured,) = collector.collect([inst]).instances
    assert measured.cpu > 0.05  # a busy loop, measured over the last interval
    assert measured.rss_mb > 0
    assert measured.restarts == 3
    assert (measured.app, measured.version, measured.n) == ("burn", 1, 0)
    # the shell alone (the root) has used next to nothing: the CPU is its child's
    root = MachineReader().processes()[burner.pid]
    assert root.ticks < 50


def _tree(pid: int) -> list[int]:
    table = MachineReader().processes()
    return [p for p, proc in table.items() if p == pid or proc.ppid == pid]


def test_instance_rss_sums_the_tree(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    holder = spawn(HOLD_64_MB)
    procs.append(holder)
    collector = TelemetryCollector("n1", tmp_path)
    inst = instance(holder.pid, app="hold")

    def big() -> bool:
        (m,) = collector.collect([inst]).instances
        return m.rss_mb > 64

    wait_until(big)


def test_an_exited_instance_is_left_out(tmp_path: Path) -> None:
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    collector = TelemetryCollector("n1", tmp_path)
    assert collector.collect([instance(proc.pid)]).instances == []


def test_a_restarted_process_is_measured_afresh(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    collector = TelemetryCollector("n1", tmp_path)
    first = spawn("sleep 60")
    procs.append(first)
    collector.collect([instance(first.pid)])
    second = spawn("sleep 60")
    procs.append(second)
    (m,) = collector.collect([instance(second.pid, restarts=1)]).instances
    assert m.cpu >= 0 and m.restarts == 1


# -- router counters ------------------------------------------------------------------


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    r = Router("127.0.0.1", 0)
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, asyncio.Event]]:
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/fail":
            return web.Response(status=500, text="boom")
        if request.path == "/slow":
            await release.wait()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", release
    release.set()
    await runner.cleanup()


async def test_router_counts_calls_errors_and_duration_per_app(
    tmp_path: Path, router: Router, upstream: tuple[str, asyncio.Event]
) -> None:
    url, _ = upstream
    router.update([Endpoint(app="web", node="n1", n=0, version=1, url=url)])
    base = f"http://127.0.0.1:{router.port}"
    async with aiohttp.ClientSession() as http:
        for path in ["/apps/web/a"] * 5 + ["/apps/web/fail"] * 2 + ["/apps/nobody/x"]:
            async with http.get(base + path) as response:
                await response.read()
    collector = TelemetryCollector("n1", tmp_path)
    update = collector.collect([], *router.take_counters())
    by_app = {e.app: e for e in update.endpoints}
    assert set(by_app) == {"web", "nobody"}
    assert (by_app["web"].calls, by_app["web"].errors) == (7, 2)
    assert by_app["web"].total_ms > 0
    assert by_app["web"].in_flight == 0
    assert (by_app["nobody"].calls, by_app["nobody"].errors) == (1, 1)  # no upstream: 503
    # taken: the next update starts from zero
    assert collector.collect([], *router.take_counters()).endpoints == []


async def test_router_reports_calls_in_flight(
    tmp_path: Path, router: Router, upstream: tuple[str, asyncio.Event]
) -> None:
    url, release = upstream
    router.update([Endpoint(app="web", node="n1", n=0, version=1, url=url)])
    collector = TelemetryCollector("n1", tmp_path)
    async with aiohttp.ClientSession() as http:
        slow = [
            asyncio.create_task(http.get(f"http://127.0.0.1:{router.port}/apps/web/slow"))
            for _ in range(3)
        ]
        deadline = time.monotonic() + 10
        while router.take_counters()[1].get("web", 0) < 3:
            assert time.monotonic() < deadline, "the slow calls never reached the router"
            await asyncio.sleep(0.02)
        (open_calls,) = collector.collect([], *router.take_counters()).endpoints
        assert (open_calls.app, open_calls.in_flight, open_calls.calls) == ("web", 3, 0)
        release.set()
        for response in await asyncio.gather(*slow):
            assert response.status == 200
            response.release()
    (done,) = collector.collect([], *router.take_counters()).endpoints
    assert (done.in_flight, done.calls, done.errors) == (0, 3, 0)

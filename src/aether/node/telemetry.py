"""The node's telemetry: figures from /proc and the router, pushed to the server each interval.

Machine figures:

- ``cpu``: busy share of all CPUs (0..1) between two readings of ``/proc/stat``
  (busy = everything but idle and iowait); since boot on the first reading;
- memory: ``MemTotal - MemAvailable`` of ``/proc/meminfo``;
- disk: ``statvfs`` of the node's data directory (used = blocks - free blocks);
- network: received and sent bytes of ``/proc/net/dev`` summed over every
  interface but ``lo``, cumulative (the server turns them into rates).

Per instance, over its whole process tree (the process the driver started and
every descendant, found through the parent pids of one ``/proc/*/stat`` scan):

- ``cpu``: cores used since the previous reading, from ``utime + stime +
  cutime + cstime`` summed over the tree (the ``c`` terms keep the time of
  children that already exited); a new process is measured over its lifetime;
- ``rss_mb``: resident set summed over the tree (field ``rss`` of
  ``/proc/PID/stat``, the same pages as ``VmRSS``);
- ``restarts``: crashes of the instance since the node started.

Per app, what this node's router saw since the previous push (calls, errors,
their summed duration) and the calls open at the moment of the push.

Per slice entry point (``entries``): the router's per entry counters and each
ACTIVE slice instance's ``$stats``; the push's answer carries the leader's
cluster snapshot, which the node hands to its slice instances (``$snapshot``).
See :mod:`aether.node.slice_telemetry`.

:class:`TelemetryPusher` pushes one ``NodeMetrics`` per interval
(``RegisterOut.config.telemetry_interval``) over HTTP -- never through the
state store; a failed push is logged at debug level and the next one is sent
on time. Nothing else waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aether.errors import AetherError
from aether.model.telemetry import EndpointMetrics, EntryMetrics, InstanceMetrics, NodeMetrics
from aether.node.slice_telemetry import (
    STATS_TIMEOUT,
    SliceControls,
    router_entries,
    slice_targets,
)

if TYPE_CHECKING:
    from aether.client import ApiClient
    from aether.model.api import RegisterOut
    from aether.node.router import CallCounter, Router

__all__ = [
    "InstanceProcess",
    "MachineReader",
    "TelemetryCollector",
    "TelemetryPusher",
    "instances_of",
]

log = logging.getLogger("aether.node.telemetry")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MB = 1024.0 * 1024.0


@dataclass(frozen=True, slots=True)
class InstanceProcess:
    """What the collector needs of one running instance."""

    key: str
    app: str
    version: int
    n: int
    pid: int  # the process the driver started (the root of its tree)
    restarts: int = 0


def instances_of(runners: Mapping[str, Any]) -> list[InstanceProcess]:
    """The instances of ``InstanceRunner``s whose process is running now."""
    out = []
    for runner in runners.values():
        handle = runner.handle
        if handle is None or handle.returncode is not None or runner.gone:
            continue
        record = runner.record
        out.append(
            InstanceProcess(
                key=record.key,
                app=record.app,
                version=record.version,
                n=record.n,
                pid=handle.pid,
                restarts=getattr(runner, "crashes", 0),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class _Proc:
    ppid: int
    ticks: int  # utime + stime + cutime + cstime
    rss_pages: int
    start_ticks: int  # since boot


class MachineReader:
    """Reads /proc (``proc`` may point elsewhere, e.g. a host's /proc mounted in a container)."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc

    def cpu_times(self) -> tuple[int, int]:
        """(busy, total) jiffies of all CPUs since boot."""
        with (self.proc / "stat").open("rb") as fh:
            first = fh.readline().split()
        values = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
        total = sum(values)
        return total - values[3] - values[4], total

    def memory_mb(self) -> tuple[float, float]:
        """(used, total) MB: ``MemTotal - MemAvailable``."""
        fields: dict[bytes, int] = {}
        with (self.proc / "meminfo").open("rb") as fh:
            for line in fh:
                name, _, rest = line.partition(b":")
                if name in (b"MemTotal", b"MemAvailable"):
                    fields[name] = int(rest.split()[0])  # kB
                    if len(fields) == 2:
                        break
        total = fields.get(b"MemTotal", 0) / 1024.0
        available = fields.get(b"MemAvailable", 0) / 1024.0
        return max(0.0, total - available), total

    def net_bytes(self) -> tuple[int, int]:
        """(received, sent) bytes since boot over every interface but ``lo``."""
        rx = tx = 0
        with (self.proc / "net" / "dev").open("rb") as fh:
            for line in fh.readlines()[2:]:
                name, _, rest = line.partition(b":")
                if name.strip() == b"lo":
                    continue
                fields = rest.split()
                if len(fields) >= 9:
                    rx += int(fields[0])
                    tx += int(fields[8])
        return rx, tx

    def uptime(self) -> float:
        return float((self.proc / "uptime").read_bytes().split()[0])

    def processes(self) -> dict[int, _Proc]:
        """Every process's parent, CPU ticks and resident pages (one scan of /proc)."""
        table: dict[int, _Proc] = {}
        for name in os.listdir(self.proc):
            if not name.isdigit():
                continue
            try:
                with open(self.proc / name / "stat", "rb") as fh:
                    data = fh.read()
            except OSError:  # exited meanwhile
                continue
            # the command name is in parentheses and may hold spaces: split after it
            fields = data[data.rindex(b")") + 2 :].split()
            if len(fields) < 22:
                continue
            table[int(name)] = _Proc(
                ppid=int(fields[1]),
                ticks=int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14]),
                rss_pages=int(fields[21]),
                start_ticks=int(fields[19]),
            )
        return table


def disk_mb(path: Path) -> tuple[float, float]:
    """(used, total) MB of the file system holding ``path``."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return used / MB, max(total / MB, 1e-6)


def _trees(table: Mapping[int, _Proc], roots: Iterable[int]) -> dict[int, list[int]]:
    """Each root pid with its descendants (itself first); a root that is gone has none."""
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.ppid, []).append(pid)
    out: dict[int, list[int]] = {}
    for root in roots:
        if root not in table:
            out[root] = []
            continue
        tree, stack = [], [root]
        while stack:
            pid = stack.pop()
            tree.append(pid)
            stack.extend(children.get(pid, ()))
        out[root] = tree
    return out


class TelemetryCollector:
    """Turns /proc readings and router counters into one ``NodeMetrics`` per call."""

    def __init__(
        self,
        node_id: str,
        data_dir: Path,
        *,
        reader: MachineReader | None = None,
        interval: float = 1.0,
    ) -> None:
        self.node_id = node_id
        self.data_dir = data_dir
        self.reader = reader or MachineReader()
        self.interval = interval  # what the first update says it covers
        self.seq = 0
        self._cpu: tuple[int, int] | None = None
        self._last: float | None = None  # monotonic time of the previous collect
        self._ticks: dict[str, tuple[int, int, float]] = {}  # key -> (pid, ticks, monotonic)

    def collect(
        self,
        instances: Iterable[InstanceProcess] = (),
        calls: Mapping[str, CallCounter] | None = None,
        in_flight: Mapping[str, int] | None = None,
        *,
        now: float | None = None,
        entries: Iterable[EntryMetrics] = (),
    ) -> NodeMetrics:
        """One update; ``calls`` and ``in_flight`` come from ``Router.take_counters``,
        ``entries`` from the router and the slice instances (``slice_telemetry``)."""
        mono = time.monotonic()
        interval = self.interval if self._last is None else max(mono - self._last, 1e-3)
        self._last = mono
        busy, total = self.reader.cpu_times()
        if self._cpu is None:
            cpu = busy / total if total else 0.0
        else:
            d_total = total - self._cpu[1]
            cpu = (busy - self._cpu[0]) / d_total if d_total > 0 else 0.0
        self._cpu = (busy, total)
        mem_used, mem_total = self.reader.memory_mb()
        disk_used, disk_total = disk_mb(self.data_dir)
        rx, tx = self.reader.net_bytes()
        update = NodeMetrics(
            node=self.node_id,
            ts=time.time() if now is None else now,
            seq=self.seq,
            interval=interval,
            cpu=min(1.0, max(0.0, cpu)),
            memory_used_mb=mem_used,
            memory_total_mb=max(mem_total, 1e-6),
            disk_used_mb=disk_used,
            disk_total_mb=disk_total,
            net_rx_bytes=rx,
            net_tx_bytes=tx,
            instances=self._instances(list(instances), mono),
            endpoints=_endpoints(calls or {}, in_flight or {}),
            entries=list(entries),
        )
        self.seq += 1
        return update

    def _instances(self, instances: list[InstanceProcess], mono: float) -> list[InstanceMetrics]:
        if not instances:
            self._ticks = {}
            return []
        table = self.reader.processes()
        trees = _trees(table, {i.pid for i in instances})
        uptime: float | None = None
        out = []
        seen: dict[str, tuple[int, int, float]] = {}
        for inst in instances:
            tree = trees.get(inst.pid, [])
            if not tree:
                continue  # exited between the runner's view and the scan
            ticks = sum(table[p].ticks for p in tree)
            rss = sum(table[p].rss_pages for p in tree) * PAGE_BYTES / MB
            before = self._ticks.get(inst.key)
            if before is not None and before[0] == inst.pid and mono > before[2]:
                cpu = max(0, ticks - before[1]) / CLOCK_TICKS / (mono - before[2])
            else:  # first sight of this process: its average over its lifetime
                if uptime is None:
                    uptime = self.reader.uptime()
                lifetime = uptime - table[inst.pid].start_ticks / CLOCK_TICKS
                cpu = ticks / CLOCK_TICKS / lifetime if lifetime > 0 else 0.0
            seen[inst.key] = (inst.pid, ticks, mono)
            out.append(
                InstanceMetrics(
                    key=inst.key,
                    app=inst.app,
                    version=inst.version,
                    n=inst.n,
                    cpu=max(0.0, cpu),
                    rss_mb=rss,
                    restarts=inst.restarts,
                )
            )
        self._ticks = seen
        return out


def _endpoints(
    calls: Mapping[str, CallCounter], in_flight: Mapping[str, int]
) -> list[EndpointMetrics]:
    out = []
    for app in sorted(set(calls) | set(in_flight)):
        counter = calls.get(app)
        out.append(
            EndpointMetrics(
                app=app,
                calls=counter.calls if counter else 0,
                errors=counter.errors if counter else 0,
                total_ms=counter.total_ms if counter else 0.0,
                in_flight=max(0, in_flight.get(app, 0)),
            )
        )
    return out


class TelemetryPusher:
    """The node's push loop: collect, then POST, once per telemetry interval."""

    def __init__(
        self,
        client: ApiClient,
        collector: TelemetryCollector,
        router: Router | None,
        runners: Mapping[str, Any],
        registration: Callable[[], RegisterOut | None],
    ) -> None:
        self.client = client
        self.collector = collector
        self.router = router
        self.runners = runners
        self.registration = registration
        self.pushed = 0
        self.failed = 0
        self.slices = SliceControls()  # $stats in, the leader's snapshot out

    def _interval(self) -> float | None:
        """Seconds between pushes, or None while unregistered or when the server said off."""
        reg = self.registration()
        if reg is None or not reg.config.features.get("telemetry", True):
            return None
        return max(0.05, reg.config.telemetry_interval)

    async def push_once(self) -> NodeMetrics:
        interval = self._interval() or 1.0
        targets = slice_targets(self.runners)
        served = await self.slices.stats(targets, min(STATS_TIMEOUT, interval / 2))
        calls, in_flight = self.router.take_counters() if self.router else ({}, {})
        entries = router_entries(self.router) + served
        update = self.collector.collect(
            instances_of(self.runners), calls, in_flight, entries=entries
        )
        try:
            answer = await self.client.push_metrics(update, timeout=max(2.0, interval))
            self.pushed += 1
        except AetherError as exc:
            self.failed += 1
            log.debug("metrics push %d failed: %s", update.seq, exc)
            return update
        if answer is not None:
            self.slices.keep(answer.snapshots)
            self.slices.deliver_soon(targets)
        return update

    async def run(self) -> None:
        next_at = time.monotonic()
        while True:
            interval = self._interval()
            if interval is None:
                await asyncio.sleep(0.2)
                next_at = time.monotonic()
                continue
            self.collector.interval = interval
            next_at += interval
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (a slow push): start again from now
                next_at, delay = time.monotonic(), 0.0
            await asyncio.sleep(delay)
            try:
                await self.push_once()
            except (OSError, ValueError) as exc:  # an odd /proc reading: skip this push
                log.debug("collecting metrics failed: %s", exc)

    async def close(self) -> None:
        """Close the connections to slice instances (after ``run`` was cancelled)."""
        await self.slices.close()

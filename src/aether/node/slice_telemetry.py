"""Slices on this node: their entry points' figures in, the leader's snapshot out.

Each telemetry interval the node:

- takes its router's per entry counters (``Router.take_entry_counters()``:
  the calls it sent to slices, wherever they run) as ``router`` rows;
- asks each ACTIVE slice instance it runs for ``$stats`` (every call the
  instance served since the previous ``$stats``, from a router or a handle)
  over the slice wire protocol, all at once with a short timeout, as
  ``instance`` rows (an instance that does not answer in time adds none);
- after the push, hands the leader's cluster snapshot of each tenant (the
  push's answer, ``model.telemetry.PushAnswer``) to that tenant's ACTIVE slice
  instances with ``$snapshot``, in the background (a delivery still running
  when the next snapshot comes is not doubled: the next one waits for it).

An instance is found by its runner's ``slice_control`` (``node.slice_control``:
host, port, control key, cluster name, tenant; present while it is ACTIVE). One multiplexed
``wire.Connection`` per instance is kept open between intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aether.model.telemetry import EntryMetrics, TenantSnapshot
from aether.node.router import Router
from aether.node.runner import InstanceRunner
from aether.slices.wire import CallFailed, Connection

__all__ = ["SliceControls", "SliceTarget", "router_entries", "slice_targets", "stats_entries"]

log = logging.getLogger("aether.node.telemetry")

STATS_TIMEOUT = 0.5  # seconds an instance has to answer $stats
SNAPSHOT_TIMEOUT = 1.0  # seconds an instance has to take $snapshot
_FAILED = object()  # a control call that failed (a result may itself be None)


@dataclass(frozen=True, slots=True)
class SliceTarget:
    """One ACTIVE slice instance on this node, as its control calls reach it."""

    slice: str  # the cluster name
    tenant: str
    host: str
    port: int
    key: str

    @property
    def url(self) -> str:
        """Its endpoint url (the same as in the endpoint table)."""
        return f"http://{self.host}:{self.port}"


def slice_targets(runners: Mapping[str, InstanceRunner]) -> list[SliceTarget]:
    """The runners' ``slice_control`` (those that have one now: ACTIVE slice instances)."""
    controls = [r.slice_control for r in runners.values() if r.slice_control is not None]
    return [
        SliceTarget(slice=c.app, tenant=c.tenant, host=c.host, port=c.port, key=c.key)
        for c in controls
    ]


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0
    return max(0, int(value))


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return max(0.0, float(value))


def stats_entries(target: SliceTarget, stats: Any) -> list[EntryMetrics]:
    """An instance's ``$stats`` answer (``{ENTRY: {"calls", "errors", "duration_s",
    "in_flight"}}``) as ``instance`` rows; anything malformed is left out."""
    if not isinstance(stats, dict):
        return []
    out = []
    for entry, figures in sorted(stats.items()):
        if not isinstance(entry, str) or not entry or not isinstance(figures, dict):
            continue
        out.append(
            EntryMetrics(
                slice=target.slice,
                entry=entry,
                source="instance",
                url=target.url,
                calls=_count(figures.get("calls")),
                errors=_count(figures.get("errors")),
                duration_s=_seconds(figures.get("duration_s")),
                in_flight=_count(figures.get("in_flight")),
            )
        )
    return out


def router_entries(router: Router | None) -> list[EntryMetrics]:
    """The router's per entry counters since the previous take
    (``Router.take_entry_counters``), with the calls open now, as ``router`` rows."""
    if router is None:
        return []
    taken, open_calls = router.take_entry_counters()
    out = []
    for key in sorted(set(taken) | set(open_calls)):
        slice_, entry = key
        counter = taken.get(key)
        out.append(
            EntryMetrics(
                slice=slice_,
                entry=entry,
                source="router",
                calls=counter.calls if counter else 0,
                errors=counter.errors if counter else 0,
                duration_s=counter.total_ms / 1000.0 if counter else 0.0,
                in_flight=open_calls.get(key, 0),
            )
        )
    return out


class SliceControls:
    """The node's control calls to its slice instances: ``$stats`` and ``$snapshot``."""

    def __init__(self) -> None:
        self._connections: dict[tuple[str, int, str], Connection] = {}
        self._delivering: asyncio.Task[None] | None = None
        self.snapshots: dict[str, TenantSnapshot] = {}  # the newest, per tenant
        self.delivered = 0  # $snapshot calls answered
        self.failed = 0  # control calls that failed or timed out

    async def _connection(self, target: SliceTarget, timeout: float) -> Connection:
        key = (target.host, target.port, target.key)
        conn = self._connections.get(key)
        if conn is None or conn.closed:
            conn = await Connection.open(target.host, target.port, timeout=timeout)
            self._connections[key] = conn
        return conn

    async def _call(
        self, target: SliceTarget, entry: str, kwargs: dict[str, Any], timeout: float
    ) -> Any:
        try:
            async with asyncio.timeout(timeout):
                conn = await self._connection(target, timeout)
                return await conn.call(entry, kwargs=kwargs, key=target.key)
        except (CallFailed, OSError, TimeoutError, ValueError) as exc:
            self.failed += 1
            log.debug("%s to %s (%s) failed: %s", entry, target.slice, target.url, exc)
            return _FAILED

    async def _forget_gone(self, targets: Iterable[SliceTarget]) -> None:
        live = {(t.host, t.port, t.key) for t in targets}
        for key in [k for k in self._connections if k not in live]:
            await self._connections.pop(key).close()

    async def stats(
        self, targets: list[SliceTarget], timeout: float = STATS_TIMEOUT
    ) -> list[EntryMetrics]:
        """Every target's ``$stats`` at once, as ``instance`` rows (none from those that
        fail or do not answer within ``timeout``)."""
        await self._forget_gone(targets)
        if not targets:
            return []
        answers = await asyncio.gather(*(self._call(t, "$stats", {}, timeout) for t in targets))
        return [
            row
            for t, answer in zip(targets, answers, strict=True)
            for row in stats_entries(t, answer)
        ]

    def keep(self, snapshots: Mapping[str, TenantSnapshot]) -> None:
        """The newest snapshots from a push's answer (replacing the previous ones)."""
        self.snapshots = dict(snapshots)

    def deliver_soon(self, targets: list[SliceTarget], timeout: float = SNAPSHOT_TIMEOUT) -> None:
        """Hand the newest snapshots to the targets in the background (skipped while the
        previous delivery runs: the next interval's carries newer figures anyway)."""
        if self._delivering is not None and not self._delivering.done():
            return
        if not targets or not self.snapshots:
            return
        self._delivering = asyncio.create_task(self.deliver(targets, timeout), name="$snapshot")

    async def deliver(self, targets: list[SliceTarget], timeout: float = SNAPSHOT_TIMEOUT) -> None:
        """``$snapshot`` to each target with its tenant's snapshot (if there is one)."""
        calls = []
        for target in targets:
            snapshot = self.snapshots.get(target.tenant)
            if snapshot is not None:
                kwargs = {"snapshot": snapshot.model_dump(mode="json")}
                calls.append(self._call(target, "$snapshot", kwargs, timeout))
        for answer in await asyncio.gather(*calls):
            if answer is not _FAILED:
                self.delivered += 1

    async def close(self) -> None:
        if self._delivering is not None:
            self._delivering.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._delivering
        for conn in self._connections.values():
            await conn.close()
        self._connections.clear()

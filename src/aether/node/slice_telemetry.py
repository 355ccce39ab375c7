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

An instance is found by its runner's ``slice_control`` (host, port, control
key, cluster name, tenant; present while it is ACTIVE). One multiplexed
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

from aether.model.names import split_cluster_name
from aether.model.telemetry import EntryMetrics, TenantSnapshot
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


def slice_targets(runners: Mapping[str, Any]) -> list[SliceTarget]:
    """The runners' ``slice_control`` (those that have one now: ACTIVE slice instances)."""
    out = []
    for runner in runners.values():
        control = getattr(runner, "slice_control", None)
        if control is None:
            continue
        name = (
            getattr(control, "cluster_name", None)
            or getattr(control, "slice", None)
            or getattr(control, "app", None)
            or getattr(getattr(runner, "record", None), "app", None)
        )
        if not isinstance(name, str) or not name:
            continue
        tenant = getattr(control, "tenant", None) or split_cluster_name(name)[1]
        out.append(
            SliceTarget(
                slice=name,
                tenant=str(tenant),
                host=str(control.host),
                port=int(control.port),
                key=str(control.key),
            )
        )
    return out


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


def router_entries(router: Any) -> list[EntryMetrics]:
    """The router's per entry counters since the previous take, as ``router`` rows.

    ``take_entry_counters()`` answers ``{(slice, entry): counter}`` (or that and
    the open calls per entry, like ``take_counters``); a counter has ``calls``,
    ``errors`` and ``total_ms`` (or ``duration_s``), and may have ``in_flight``
    and ``by_url`` (open calls per instance url). A router without it adds none.
    """
    take = getattr(router, "take_entry_counters", None) if router is not None else None
    if take is None:
        return []
    taken = take()
    open_calls: Mapping[Any, Any] = {}
    if isinstance(taken, tuple):
        taken, open_calls = taken
    out = []
    for key in sorted(set(taken) | set(open_calls)):
        slice_, entry = key
        counter = taken.get(key)
        duration = getattr(counter, "duration_s", None)
        if duration is None:
            duration = getattr(counter, "total_ms", 0.0) / 1000.0
        in_flight = open_calls.get(key, getattr(counter, "in_flight", 0))
        by_url = getattr(counter, "by_url", None) or {}
        out.append(
            EntryMetrics(
                slice=slice_,
                entry=entry,
                source="router",
                calls=_count(getattr(counter, "calls", 0)),
                errors=_count(getattr(counter, "errors", 0)),
                duration_s=_seconds(duration),
                in_flight=_count(in_flight),
                by_url={str(u): _count(n) for u, n in dict(by_url).items()},
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

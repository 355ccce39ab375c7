"""Telemetry math: fold node pushes into cluster samples, and samples into roll-ups.

Pure functions of plain data (no I/O, no clock: ``now`` is passed in). The
server's ``TelemetryHub`` keeps one :class:`NodeState` per node, built by
:func:`fold` when a push arrives, and calls :func:`aggregate` every second.

Per node (one :class:`NodeSample`):

- ``cpu``, ``memory_fraction`` (used / total), ``disk_fraction`` from the
  latest push; ``net_rx_per_s`` / ``net_tx_per_s`` from the cumulative byte
  counters of the latest two pushes (by the node's clock; 0 when a counter
  goes backwards, e.g. after a reboot);
- ``stale`` when the latest push arrived more than ``STALE_INTERVALS`` (3)
  of the node's own intervals ago: the figures are then the last known ones.

Per app (one :class:`AppSample`), over the nodes that are not stale:

- endpoint figures are summed over every router: ``calls_per_s`` is the sum
  of ``calls / interval``, ``latency_ms`` is ``sum(total_ms) / sum(calls)``
  (0 without calls);
- instance figures are averaged over the instances reporting: CPU and RSS per
  instance, and ``in_flight_per_instance`` = open calls / instances (open
  calls themselves when no instance reports).

Per slice entry point (one :class:`EntrySample`), over the nodes that are not
stale: the figures the instances counted (``$stats``: every call they served)
when any instance reported the entry, else the routers' (calls they sent), so
a call is never counted twice; ``calls_per_s`` and ``errors_per_s`` are summed
rates, ``mean_ms`` = ``1000 * sum(duration_s) / sum(calls)`` (0 without calls),
``in_flight`` the open calls summed, ``by_url`` the open calls per instance url
(each instance's own count, plus what routers reported per url). A tenant's
cluster snapshot (:func:`tenant_snapshots`) is these figures, by plain names.

Roll-ups (one :class:`Rollup` per node and per app and minute): the mean and
the maximum of each figure over the fresh seconds of that minute; the mean of
``latency_ms`` is weighted by calls, i.e. the minute's mean call duration.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from aether.model.names import split_cluster_name
from aether.model.telemetry import (
    AppSample,
    ClusterSample,
    EntryFigures,
    EntrySample,
    NodeMetrics,
    NodeSample,
    Rollup,
    TenantSnapshot,
)

__all__ = [
    "APP_FIGURES",
    "FORGET_AFTER",
    "NODE_FIGURES",
    "STALE_INTERVALS",
    "Aggregator",
    "AppPartial",
    "EntryPartial",
    "NodeState",
    "RollupAccumulator",
    "aggregate",
    "app_figures",
    "app_sample",
    "entry_sample",
    "fold",
    "forgotten",
    "is_stale",
    "minute_of",
    "net_rate",
    "node_sample",
    "retention_cutoff",
    "rollups",
    "tenant_snapshots",
]

STALE_INTERVALS = 3.0  # no push for this many intervals: the node is stale
FORGET_AFTER = 300.0  # seconds without a push after which a node leaves the samples
MINUTE = 60.0

NODE_FIGURES = (
    "cpu",
    "memory_fraction",
    "disk_fraction",
    "net_rx_per_s",
    "net_tx_per_s",
    "instances",
    "restarts",
)
APP_FIGURES = (
    "instances",
    "cpu_per_instance",
    "rss_mb_per_instance",
    "calls_per_s",
    "errors_per_s",
    "latency_ms",
    "in_flight_per_instance",
    "restarts",
)


def app_figures(a: AppSample) -> tuple[float, ...]:
    """An app sample's figures as floats, in ``APP_FIGURES`` order."""
    return (
        float(a.instances),
        a.cpu_per_instance,
        a.rss_mb_per_instance,
        a.calls_per_s,
        a.errors_per_s,
        a.latency_ms,
        a.in_flight_per_instance,
        float(a.restarts),
    )


# One node's share of one app in one push, as a plain tuple (the garbage collector
# stops tracking tuples of numbers, and the hub keeps one per app per node):
# (app, instances, cpu: summed cores, rss_mb, restarts, calls, errors, total_ms, in_flight)
AppPartial = tuple[str, int, float, float, int, int, int, float, int]

# One row of a push's slice entry figures, as a plain tuple:
# (slice, entry, from_instance, calls, errors, duration_s, in_flight, url or "",
#  ((url, open calls), ...))
EntryPartial = tuple[str, str, bool, int, int, float, int, str, tuple[tuple[str, int], ...]]


@dataclass(frozen=True, slots=True)
class NodeState:
    """What the hub keeps of a node: the figures of its latest push, and when it arrived.

    Numbers only (and the raw push, if the caller keeps it): thousands of nodes
    pushing every second must not leave thousands of objects for the garbage
    collector each second.
    """

    node: str
    ts: float  # the node's clock
    interval: float
    received_at: float  # the server's clock
    cpu: float
    memory_fraction: float
    disk_fraction: float
    net_rx_bytes: int
    net_tx_bytes: int
    net_rx_per_s: float
    net_tx_per_s: float
    instances: int
    restarts: int
    apps: tuple[AppPartial, ...] = ()
    entries: tuple[EntryPartial, ...] = ()
    raw: bytes = b""  # the push as it arrived (JSON), when the caller keeps it


def net_rate(previous: int, current: int, seconds: float) -> float:
    """Bytes per second between two readings of a cumulative counter."""
    if seconds <= 0 or current < previous:
        return 0.0
    return (current - previous) / seconds


def _partials(update: NodeMetrics) -> tuple[AppPartial, ...]:
    acc: dict[str, list[float]] = {}
    for inst in update.instances:
        row = acc.get(inst.app)
        if row is None:
            row = acc[inst.app] = [0.0] * 8
        row[0] += 1
        row[1] += inst.cpu
        row[2] += inst.rss_mb
        row[3] += inst.restarts
    for ep in update.endpoints:
        row = acc.get(ep.app)
        if row is None:
            row = acc[ep.app] = [0.0] * 8
        row[4] += ep.calls
        row[5] += ep.errors
        row[6] += ep.total_ms
        row[7] += ep.in_flight
    return tuple(
        (app, int(r[0]), r[1], r[2], int(r[3]), int(r[4]), int(r[5]), r[6], int(r[7]))
        for app, r in acc.items()
    )


def _entry_partials(update: NodeMetrics) -> tuple[EntryPartial, ...]:
    return tuple(
        (
            e.slice,
            e.entry,
            e.source == "instance",
            e.calls,
            e.errors,
            e.duration_s,
            e.in_flight,
            e.url or "",
            tuple(sorted(e.by_url.items())),
        )
        for e in update.entries
    )


def fold(
    update: NodeMetrics, previous: NodeState | None, received_at: float, raw: bytes = b""
) -> NodeState:
    """The node's new state after a push (``previous``: its state before, if any)."""
    rx = tx = 0.0
    if previous is not None:
        seconds = update.ts - previous.ts
        if seconds > 0:
            rx = net_rate(previous.net_rx_bytes, update.net_rx_bytes, seconds)
            tx = net_rate(previous.net_tx_bytes, update.net_tx_bytes, seconds)
        else:  # a repeated or reordered push: keep the rates we had
            rx, tx = previous.net_rx_per_s, previous.net_tx_per_s
    return NodeState(
        node=update.node,
        ts=update.ts,
        interval=update.interval,
        received_at=received_at,
        cpu=update.cpu,
        memory_fraction=update.memory_used_mb / update.memory_total_mb,
        disk_fraction=update.disk_used_mb / update.disk_total_mb,
        net_rx_bytes=update.net_rx_bytes,
        net_tx_bytes=update.net_tx_bytes,
        net_rx_per_s=rx,
        net_tx_per_s=tx,
        instances=len(update.instances),
        restarts=sum(i.restarts for i in update.instances),
        apps=_partials(update),
        entries=_entry_partials(update) if update.entries else (),
        raw=raw,
    )


def is_stale(state: NodeState, now: float) -> bool:
    return now - state.received_at > STALE_INTERVALS * state.interval


def forgotten(state: NodeState, now: float) -> bool:
    """No push for ``FORGET_AFTER`` seconds: drop the node from the samples."""
    return now - state.received_at > FORGET_AFTER


def node_sample(state: NodeState, now: float) -> NodeSample:
    return NodeSample(
        node=state.node,
        cpu=state.cpu,
        memory_fraction=state.memory_fraction,
        disk_fraction=state.disk_fraction,
        net_rx_per_s=state.net_rx_per_s,
        net_tx_per_s=state.net_tx_per_s,
        instances=state.instances,
        restarts=state.restarts,
        age=max(0.0, now - state.received_at),
        stale=is_stale(state, now),
    )


def app_sample(app: str, parts: Iterable[tuple[AppPartial, float]]) -> AppSample:
    """One app's figures from its partial sums on every (fresh) node, each with its interval."""
    instances = restarts = calls = in_flight = 0
    cpu = rss = cps = eps = total_ms = 0.0
    for (_, n, c, r, rs, k, e, ms, f), interval in parts:
        instances += n
        cpu += c
        rss += r
        restarts += rs
        calls += k
        cps += k / interval
        eps += e / interval
        total_ms += ms
        in_flight += f
    per = 1.0 / instances if instances else 0.0
    return AppSample(
        app=app,
        instances=instances,
        cpu_per_instance=cpu * per,
        rss_mb_per_instance=rss * per,
        calls_per_s=cps,
        errors_per_s=eps,
        latency_ms=total_ms / calls if calls else 0.0,
        in_flight_per_instance=in_flight * per if instances else float(in_flight),
        restarts=restarts,
    )


def entry_sample(
    slice_: str, entry: str, parts: Iterable[tuple[EntryPartial, float]]
) -> EntrySample:
    """One entry point's figures from its rows on every (fresh) node, each with its interval:
    the instances' rows when there are any, else the routers'."""
    rows = list(parts)
    if any(row[2] for row, _ in rows):
        rows = [(row, interval) for row, interval in rows if row[2]]
    calls = in_flight = 0
    cps = eps = duration = 0.0
    urls: set[str] = set()
    by_url: dict[str, int] = {}
    for (_, _, own, k, e, d, f, url, per_url), interval in rows:
        calls += k
        cps += k / interval
        eps += e / interval
        duration += d
        in_flight += f
        if own and url:
            urls.add(url)
            by_url[url] = by_url.get(url, 0) + f
        for u, n in per_url:
            by_url[u] = by_url.get(u, 0) + n
    instances = len(urls) if urls else sum(1 for row, _ in rows if row[2])
    return EntrySample(
        slice=slice_,
        entry=entry,
        instances=instances,
        calls_per_s=cps,
        errors_per_s=eps,
        mean_ms=1000.0 * duration / calls if calls else 0.0,
        in_flight=in_flight,
        in_flight_per_instance=in_flight / instances if instances else float(in_flight),
        by_url=dict(sorted(by_url.items())),
    )


def tenant_snapshots(sample: ClusterSample) -> dict[str, TenantSnapshot]:
    """Each tenant's cluster snapshot (its slices by plain name) from a sample whose
    ``slices`` are keyed by cluster name."""
    out: dict[str, TenantSnapshot] = {}
    for name, entries in sample.slices.items():
        plain, tenant = split_cluster_name(name)
        snapshot = out.get(tenant)
        if snapshot is None:
            snapshot = out[tenant] = TenantSnapshot(at=sample.ts)
        snapshot.slices[plain] = {
            entry: EntryFigures(
                in_flight=e.in_flight,
                calls_per_s=e.calls_per_s,
                mean_ms=e.mean_ms,
                by_url=e.by_url,
            )
            for entry, e in entries.items()
        }
    return out


class Aggregator:
    """``aggregate`` one node at a time, so a shell can pause between chunks of nodes."""

    def __init__(self, now: float) -> None:
        self.now = now
        self._nodes: dict[str, NodeSample] = {}
        self._parts: dict[str, list[tuple[AppPartial, float]]] = {}
        self._entries: dict[tuple[str, str], list[tuple[EntryPartial, float]]] = {}

    def add(self, state: NodeState) -> None:
        if forgotten(state, self.now):
            return
        sample = node_sample(state, self.now)
        self._nodes[state.node] = sample
        if sample.stale:
            return
        for part in state.apps:
            bucket = self._parts.get(part[0])
            if bucket is None:
                self._parts[part[0]] = [(part, state.interval)]
            else:
                bucket.append((part, state.interval))
        for row in state.entries:
            rows = self._entries.get((row[0], row[1]))
            if rows is None:
                self._entries[(row[0], row[1])] = [(row, state.interval)]
            else:
                rows.append((row, state.interval))

    def sample(self) -> ClusterSample:
        nodes = {name: self._nodes[name] for name in sorted(self._nodes)}
        apps = {app: app_sample(app, self._parts[app]) for app in sorted(self._parts)}
        slices: dict[str, dict[str, EntrySample]] = {}
        for slice_, entry in sorted(self._entries):
            slices.setdefault(slice_, {})[entry] = entry_sample(
                slice_, entry, self._entries[(slice_, entry)]
            )
        return ClusterSample(ts=self.now, nodes=nodes, apps=apps, slices=slices)


def aggregate(states: Iterable[NodeState], now: float) -> ClusterSample:
    """The cluster at ``now``: every known node (stale ones marked), apps from fresh ones."""
    aggregator = Aggregator(now)
    for state in states:
        aggregator.add(state)
    return aggregator.sample()


# -- roll-ups -----------------------------------------------------------------------


def minute_of(ts: float) -> float:
    """The start of the minute ``ts`` falls in (seconds since the epoch)."""
    return math.floor(ts / MINUTE) * MINUTE


def retention_cutoff(now: float, days: float) -> float:
    """Roll-ups of minutes that started before this are deleted."""
    return minute_of(now - days * 86400.0)


class _Series:
    __slots__ = ("count", "maxes", "sums", "weight", "weighted")

    def __init__(self, width: int) -> None:
        self.count = 0
        self.sums = [0.0] * width
        self.maxes = [-math.inf] * width
        self.weighted = 0.0  # latency_ms * calls_per_s (apps)
        self.weight = 0.0  # calls_per_s (apps)

    def add(self, values: tuple[float, ...]) -> None:
        self.count += 1
        sums, maxes = self.sums, self.maxes
        for i, v in enumerate(values):
            sums[i] += v
            if v > maxes[i]:
                maxes[i] = v


class RollupAccumulator:
    """The figures of one minute, added a sample at a time (each second)."""

    def __init__(self, minute: float) -> None:
        self.minute = minute_of(minute)
        self._nodes: dict[str, _Series] = {}
        self._apps: dict[str, _Series] = {}

    def accepts(self, sample: ClusterSample) -> bool:
        return minute_of(sample.ts) == self.minute

    def add(self, sample: ClusterSample) -> None:
        """Fold in one second (fresh nodes only); samples of other minutes are ignored."""
        if not self.accepts(sample):
            return
        for name, n in sample.nodes.items():
            if n.stale:
                continue
            series = self._nodes.get(name)
            if series is None:
                series = self._nodes[name] = _Series(len(NODE_FIGURES))
            series.add(
                (
                    n.cpu,
                    n.memory_fraction,
                    n.disk_fraction,
                    n.net_rx_per_s,
                    n.net_tx_per_s,
                    float(n.instances),
                    float(n.restarts),
                )
            )
        for name, a in sample.apps.items():
            series = self._apps.get(name)
            if series is None:
                series = self._apps[name] = _Series(len(APP_FIGURES))
            series.add(app_figures(a))
            series.weighted += a.latency_ms * a.calls_per_s
            series.weight += a.calls_per_s

    def rollups(self) -> list[Rollup]:
        """One roll-up per node and app seen, nodes first, each sorted by name."""
        return list(self.iter_rollups())

    def iter_rollups(self) -> Iterator[Rollup]:
        """``rollups`` one at a time (a shell may pause between them)."""
        kinds: tuple[tuple[Literal["node", "app"], dict[str, _Series], tuple[str, ...]], ...] = (
            ("node", self._nodes, NODE_FIGURES),
            ("app", self._apps, APP_FIGURES),
        )
        for kind, table, figures in kinds:
            for name in sorted(table):
                s = table[name]
                avg = {f: s.sums[i] / s.count for i, f in enumerate(figures)}
                if kind == "app":
                    avg["latency_ms"] = s.weighted / s.weight if s.weight > 0 else 0.0
                yield Rollup(
                    kind=kind,
                    name=name,
                    minute=self.minute,
                    samples=s.count,
                    avg=avg,
                    max={f: s.maxes[i] for i, f in enumerate(figures)},
                )


def rollups(samples: Iterable[ClusterSample]) -> list[Rollup]:
    """Roll-ups of every minute the samples cover, oldest minute first."""
    by_minute: dict[float, RollupAccumulator] = {}
    for sample in samples:
        minute = minute_of(sample.ts)
        acc = by_minute.get(minute)
        if acc is None:
            acc = by_minute[minute] = RollupAccumulator(minute)
        acc.add(sample)
    return [r for minute in sorted(by_minute) for r in by_minute[minute].rollups()]

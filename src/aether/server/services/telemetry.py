"""The telemetry hub: node pushes in, one cluster sample per second out.

Every server ingests the pushes it receives (``POST /api/v1/nodes/{node}/metrics``)
in memory -- the latest push per node and the arrival times of the last
``ARRIVALS_SECONDS`` -- in O(1) per push, with no I/O. The leader runs
:meth:`TelemetryHub.run`: every second it folds the latest push of each node
into a :class:`ClusterSample` (``core.telemetry.aggregate``), appends it to a
sliding window (``AETHER_METRICS_WINDOW_SECONDS``, 2 hours by default), and once
a minute writes the minute's roll-ups (per node and per app: mean and maximum
of each figure) to the records database, deleting those older than
``AETHER_METRICS_RETENTION_DAYS``.

The window stores each second packed: the node and app names once (shared by
consecutive seconds while they do not change) and their figures as one array
of doubles, 72 bytes per node and 64 per app (about 115 bytes per node and
second in all, measured). Two hours of a thousand nodes take about 0.8 GB, and
the garbage collector never walks them (a window of objects would be millions
of them: collections of seconds). The newest seconds are also kept as objects
(``PARSED_BUDGET`` entries), so reading the last minute or so of the window --
what the risk engine and the controller do every second -- costs nothing.

Slice entry points (issue 19): each second's per entry figures are kept with
the frame as they are (a handful per slice), the calls, errors and seconds of
every push are added up per entry as it is ingested (``entry_totals``: the
Prometheus counters), and each tick's per tenant cluster snapshots are
serialized once, for the answers to the pushes of that second
(``snapshot_answer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import struct
import time
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from pydantic import TypeAdapter

from aether.core.telemetry import (
    APP_FIGURES,
    Aggregator,
    NodeState,
    RollupAccumulator,
    aggregate,
    app_figures,
    fold,
    forgotten,
    minute_of,
    retention_cutoff,
    tenant_snapshots,
)
from aether.model.telemetry import (
    AppPoint,
    AppSample,
    ClusterSample,
    EntryPoint,
    EntrySample,
    NodeMetrics,
    NodePoint,
    NodeSample,
    PushAnswer,
)
from aether.store.election import Leadership
from aether.store.records import Records

__all__ = ["ARRIVALS_SECONDS", "TelemetryHub"]

log = logging.getLogger("aether.telemetry")

ARRIVALS_SECONDS = 120.0  # receive times kept per node (heartbeat jitter, gaps)
WINDOW_SECONDS = 7200  # one sample a second: two hours
CHUNK = 250  # nodes folded between two yields to the event loop in a tick
PARSED_MIN = 5  # newest samples kept as objects: at least this many seconds ...
PARSED_MAX = 600  # ... at most this many ...
PARSED_BUDGET = 150_000  # ... within this many node and app entries in all (GC cost)

_NODE_FIGURES = 9  # cpu .. stale, in NodeSample's field order after the name
_APP_FIGURES = len(APP_FIGURES)  # core.telemetry.app_figures, in AppSample's field order
_ANSWER_HEAD = b'{"schema":%d,"snapshots":{' % PushAnswer.SCHEMA_VERSION  # a push's answer
_nodes_json = TypeAdapter(dict[str, NodeSample]).dump_json
_apps_json = TypeAdapter(dict[str, AppSample]).dump_json
_slices_json = TypeAdapter(dict[str, dict[str, EntrySample]]).dump_json
Slices = dict[str, dict[str, EntrySample]]


@dataclass(slots=True)
class _Names:
    """The names of one frame's nodes or apps, shared by frames while they do not change."""

    names: tuple[str, ...]
    index: dict[str, int]

    @classmethod
    def of(cls, names: tuple[str, ...], previous: _Names | None) -> _Names:
        if previous is not None and previous.names == names:
            return previous
        return cls(names, {name: i for i, name in enumerate(names)})


@dataclass(slots=True)
class _Frame:
    """One aggregated second, packed; ``parsed`` while it is one of the newest."""

    ts: float
    nodes: _Names
    node_figures: bytes  # _NODE_FIGURES doubles per node
    apps: _Names
    app_figures: bytes  # _APP_FIGURES doubles per app
    parsed: ClusterSample | None
    slices: Slices | None = None  # entry points of slices (None: none)

    def node(self, name: str) -> NodeSample | None:
        i = self.nodes.index.get(name)
        if i is None:
            return None
        return _node_of(name, self.node_figures, i)

    def app(self, name: str) -> AppSample | None:
        i = self.apps.index.get(name)
        if i is None:
            return None
        return _app_of(name, self.app_figures, i)

    def sample(self) -> ClusterSample:
        if self.parsed is not None:
            return self.parsed
        nodes = {n: _node_of(n, self.node_figures, i) for i, n in enumerate(self.nodes.names)}
        apps = {a: _app_of(a, self.app_figures, i) for i, a in enumerate(self.apps.names)}
        return ClusterSample(ts=self.ts, nodes=nodes, apps=apps, slices=self.slices or {})


def _pack_nodes(sample: ClusterSample) -> bytes:
    values = array("d")
    for n in sample.nodes.values():
        values.extend(
            (
                n.cpu,
                n.memory_fraction,
                n.disk_fraction,
                n.net_rx_per_s,
                n.net_tx_per_s,
                n.instances,
                n.restarts,
                n.age,
                1.0 if n.stale else 0.0,
            )
        )
    return values.tobytes()


def _pack_apps(sample: ClusterSample) -> bytes:
    values = array("d")
    for a in sample.apps.values():
        values.extend(app_figures(a))
    return values.tobytes()


def _node_of(name: str, figures: bytes, i: int) -> NodeSample:
    v = _NODE_ROW.unpack_from(figures, i * _NODE_ROW.size)
    return NodeSample(
        node=name,
        cpu=v[0],
        memory_fraction=v[1],
        disk_fraction=v[2],
        net_rx_per_s=v[3],
        net_tx_per_s=v[4],
        instances=int(v[5]),
        restarts=int(v[6]),
        age=v[7],
        stale=v[8] != 0.0,
    )


def _app_of(name: str, figures: bytes, i: int) -> AppSample:
    v = _APP_ROW.unpack_from(figures, i * _APP_ROW.size)
    return AppSample(
        app=name,
        instances=int(v[0]),
        cpu_per_instance=v[1],
        rss_mb_per_instance=v[2],
        calls_per_s=v[3],
        errors_per_s=v[4],
        latency_ms=v[5],
        in_flight_per_instance=v[6],
        restarts=int(v[7]),
    )


_NODE_ROW = struct.Struct(f"={_NODE_FIGURES}d")
_APP_ROW = struct.Struct(f"={_APP_FIGURES}d")


class TelemetryHub:
    def __init__(
        self,
        records: Records | None = None,
        *,
        retention_days: float = 7.0,
        window_seconds: int = WINDOW_SECONDS,
    ) -> None:
        self.records = records  # None: no roll-ups are written
        self.retention_days = retention_days
        self._states: dict[str, NodeState] = {}
        self._arrivals: dict[str, deque[float]] = {}
        self._frames: deque[_Frame] = deque(maxlen=window_seconds)
        self._latest: ClusterSample | None = None
        self._latest_nodes_json: bytes | None = None  # the latest sample's nodes, as JSON
        self._snapshots: dict[str, bytes] | None = None  # the latest sample's, per tenant
        # (slice, entry, counted by instances) -> [calls, errors, seconds] since this started
        self._entry_totals: dict[tuple[str, str, bool], list[float]] = {}
        self._minute: RollupAccumulator | None = None
        self._writes: asyncio.Task[None] | None = None
        self._tick = asyncio.Event()
        self.updates = 0  # pushes ingested by this server
        self.streams = 0  # live /metrics/stream clients
        self.fast_pushes = 0  # pushes answered by the fast path (api.metrics.TelemetryFastPath)
        self.rollups_written = 0  # roll-up rows written by this server
        self.rollups_deleted = 0

    # -- ingest (every server, every push) ----------------------------------------------

    def ingest(self, update: NodeMetrics, *, received_at: float, raw: bytes | None = None) -> None:
        """Keep a node's push: O(size of the push), in memory only.

        ``raw``: the push's JSON as received, if the caller has it (kept for
        ``node_update``; serialized here otherwise).
        """
        node = update.node
        if raw is None:
            raw = update.__pydantic_serializer__.to_json(update)
        self._states[node] = fold(update, self._states.get(node), received_at, raw)
        for e in update.entries:
            key = (e.slice, e.entry, e.source == "instance")
            total = self._entry_totals.get(key)
            if total is None:
                total = self._entry_totals[key] = [0.0, 0.0, 0.0]
            total[0] += e.calls
            total[1] += e.errors
            total[2] += e.duration_s
        arrivals = self._arrivals.get(node)
        if arrivals is None:
            arrivals = self._arrivals[node] = deque()
        arrivals.append(received_at)
        cutoff = received_at - ARRIVALS_SECONDS
        while arrivals[0] < cutoff:
            arrivals.popleft()
        self.updates += 1

    def node_arrivals(self, node: str) -> list[float]:
        """Server receive times of the node's pushes, last 120 s, oldest first."""
        return list(self._arrivals.get(node, ()))

    def node_update(self, node: str) -> NodeMetrics | None:
        """The node's latest push as it arrived (per-instance and per-endpoint figures)."""
        state = self._states.get(node)
        return NodeMetrics.model_validate_json(state.raw) if state is not None else None

    def knows(self, node: str) -> bool:
        """Whether this server has telemetry of the node (a push, or a sample in the window)."""
        return node in self._states or any(node in f.nodes.index for f in self._frames)

    # -- aggregation --------------------------------------------------------------------

    def aggregate(self, now: float) -> ClusterSample:
        """The latest push of each node folded into one sample (no side effects)."""
        return aggregate(self._states.values(), now)

    def latest(self) -> ClusterSample | None:
        return self._latest

    def entry_totals(self) -> dict[tuple[str, str], tuple[float, float, float]]:
        """(slice, entry) -> (calls, errors, seconds) of every push ingested here: the
        instances' counts where any instance reported the entry, else the routers'."""
        out: dict[tuple[str, str], tuple[float, float, float]] = {}
        for (slice_, entry, own), (calls, errors, seconds) in sorted(self._entry_totals.items()):
            if own or (slice_, entry, True) not in self._entry_totals:
                out[(slice_, entry)] = (calls, errors, seconds)
        return out

    def has_snapshots(self) -> bool:
        """Whether the latest sample has slices' figures (else no push gets a snapshot)."""
        return self._latest is not None and bool(self._latest.slices)

    def snapshot_answer(self, tenants: Iterable[str]) -> bytes | None:
        """The answer to a push from a node running instances of ``tenants``: their cluster
        snapshots as ``{"schema": 1, "snapshots": {TENANT: ...}}`` (``PushAnswer``), or
        None when there is none (no sample yet, or none of them has slices)."""
        sample = self._latest
        if sample is None or not sample.slices:
            return None
        if self._snapshots is None:
            self._snapshots = {
                tenant: snap.__pydantic_serializer__.to_json(snap)
                for tenant, snap in tenant_snapshots(sample).items()
            }
        parts = [
            json.dumps(tenant).encode() + b":" + self._snapshots[tenant]
            for tenant in sorted(set(tenants))
            if tenant in self._snapshots
        ]
        if not parts:
            return None
        return _ANSWER_HEAD + b",".join(parts) + b"}}"

    def latest_json(self, apps: Mapping[str, str] | None = None) -> bytes | None:
        """The latest sample as JSON; ``apps`` (cluster name → the name shown): keep only
        these apps, named as shown (all nodes stay)."""
        sample = self._latest
        if sample is None:
            return None
        if self._latest_nodes_json is None:
            self._latest_nodes_json = _nodes_json(sample.nodes)
        chosen = (
            sample.apps
            if apps is None
            else {apps[a]: s for a, s in sample.apps.items() if a in apps}
        )
        slices = (
            sample.slices
            if apps is None
            else {apps[a]: s for a, s in sample.slices.items() if a in apps}
        )
        return b'{"ts":%s,"nodes":%s,"apps":%s,"slices":%s}' % (
            repr(sample.ts).encode(),
            self._latest_nodes_json,
            _apps_json(chosen),
            _slices_json(slices),
        )

    def window(self, seconds: float | None = None) -> list[ClusterSample]:
        """The samples of the last ``seconds`` (None: the whole window), oldest first."""
        out = [frame.sample() for frame in self._recent(seconds)]
        out.reverse()
        return out

    def node_history(self, node: str, seconds: float | None = None) -> list[NodePoint]:
        """One node's samples from the window, each with its ``ts``, oldest first."""
        out = []
        for frame in self._recent(seconds):
            found = frame.node(node)
            if found is not None:
                out.append(NodePoint(ts=frame.ts, **found.__dict__))
        out.reverse()
        return out

    def app_history(self, app: str, seconds: float | None = None) -> list[AppPoint]:
        """One app's samples from the window, each with its ``ts``, oldest first."""
        out = []
        for frame in self._recent(seconds):
            found = frame.app(app)
            if found is not None:
                out.append(AppPoint(ts=frame.ts, **found.__dict__))
        out.reverse()
        return out

    def entry_history(self, slice_: str, seconds: float | None = None) -> list[EntryPoint]:
        """One slice's entry points from the window, each second's with its ``ts``, oldest
        first (by entry within a second)."""
        out: list[EntryPoint] = []
        for frame in self._recent(seconds):
            entries = (frame.slices or {}).get(slice_)
            if entries:
                out.extend(
                    EntryPoint(ts=frame.ts, **e.__dict__) for e in reversed(entries.values())
                )
        out.reverse()
        return out

    def _recent(self, seconds: float | None) -> Iterator[_Frame]:
        """Frames newest first, back to ``seconds`` before the newest."""
        if not self._frames:
            return
        cutoff = -float("inf") if seconds is None else self._frames[-1].ts - seconds
        for frame in reversed(self._frames):
            if frame.ts <= cutoff:
                return
            yield frame

    def _append(self, sample: ClusterSample, node_figures: bytes, app_figures: bytes) -> None:
        previous = self._frames[-1] if self._frames else None
        frame = _Frame(
            ts=sample.ts,
            nodes=_Names.of(tuple(sample.nodes), previous.nodes if previous else None),
            node_figures=node_figures,
            apps=_Names.of(tuple(sample.apps), previous.apps if previous else None),
            app_figures=app_figures,
            parsed=sample,
            slices=sample.slices or None,
        )
        self._frames.append(frame)
        self._latest = sample
        self._latest_nodes_json = None
        self._snapshots = None
        entries = max(1, len(sample.nodes) + len(sample.apps))
        keep = max(PARSED_MIN, min(PARSED_MAX, PARSED_BUDGET // entries))
        index = len(self._frames) - keep - 1
        while index >= 0 and self._frames[index].parsed is not None:
            self._frames[index].parsed = None
            index -= 1

    # -- the leader's loop --------------------------------------------------------------

    async def tick(self, now: float) -> ClusterSample:
        """One second: aggregate, append to the window, roll up; a finished minute is written.

        The folding yields to the event loop every ``CHUNK`` nodes, so pushes
        keep being served; the roll-up write runs in the background (``settle``
        waits for it).
        """
        for node in [n for n, s in self._states.items() if forgotten(s, now)]:
            del self._states[node]
            self._arrivals.pop(node, None)
        states = list(self._states.values())
        closing = self._minute
        if closing is not None and closing.minute == minute_of(now):
            closing = None
        else:
            self._minute = RollupAccumulator(now)
        minute = self._minute
        assert minute is not None
        # thousands of nodes take tens of milliseconds: let pushes in between chunks
        # (a worker thread would be worse: it holds the GIL against the event loop)
        aggregator = Aggregator(now)
        for i, state in enumerate(states, 1):
            aggregator.add(state)
            if i % CHUNK == 0:
                await asyncio.sleep(0)
        sample = aggregator.sample()
        await asyncio.sleep(0)
        node_figures, app_figures = _pack_nodes(sample), _pack_apps(sample)
        await asyncio.sleep(0)
        minute.add(sample)
        self._append(sample, node_figures, app_figures)
        if closing is not None:
            self._write(closing, now)
        self._tick.set()
        self._tick = asyncio.Event()
        return sample

    async def next_sample(self, timeout: float) -> ClusterSample | None:
        """Wait for the next tick (at most ``timeout`` seconds); its sample, or None."""
        event = self._tick
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
                return self._latest
        return None

    def _write(self, closed: RollupAccumulator, now: float) -> None:
        if self.records is None:
            return
        previous = self._writes

        async def write() -> None:
            if previous is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await previous
            await self.write_rollups(closed, now)

        self._writes = asyncio.create_task(write(), name="telemetry roll-ups")

    async def write_rollups(self, closed: RollupAccumulator, now: float) -> None:
        """Store a finished minute's roll-ups, then apply the retention (errors are logged).

        In chunks of ``CHUNK`` rows, each its own statement: thousands of nodes
        never hold the event loop for long.
        """
        records = self.records
        if records is None:
            return
        rows = closed.iter_rollups()
        first = True
        try:
            while True:
                chunk = [
                    r.model_dump(include={"kind", "name", "samples", "avg", "max"})
                    for r in itertools.islice(rows, CHUNK)
                ]
                if not chunk and not first:
                    break
                await records.write_rollups(closed.minute, chunk, replace=first)
                first = False
                self.rollups_written += len(chunk)
            self.rollups_deleted += await records.delete_rollups_before(
                retention_cutoff(now, self.retention_days)
            )
        except Exception:
            log.exception("writing the telemetry roll-ups of minute %.0f failed", closed.minute)

    async def settle(self) -> None:
        """Wait until the roll-ups scheduled so far are written."""
        while self._writes is not None and not self._writes.done():
            await asyncio.wait([self._writes])

    async def run(self, leadership: Leadership) -> None:
        """The leader loop: ``tick`` at every wall-clock second until cancelled."""
        self._minute = None  # a new term starts a new minute (a partial one is rewritten)
        try:
            while not leadership.lost.is_set():
                await asyncio.sleep(1.0 - time.time() % 1.0)
                try:
                    await self.tick(time.time())
                except Exception:
                    log.exception("telemetry aggregation failed; trying again next second")
        finally:
            self._minute = None

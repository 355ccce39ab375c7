"""The risk engine: on the leader, every second, score each node with the rules.

Each pass:

1. reads the signals recorded since the last pass from the records database
   (``id`` above the highest seen -- plus anything created in the last
   ``LAG_SECONDS``, so a row that committed after a higher id was read is not
   missed), so signals posted to any server reach the leader; folds them into
   an in-memory history per node (``aether.core.risk.fold_signals``);
2. takes the nodes to score: the live ones (``nodes/`` in the state store) and
   every node with signals in its history (a node can be between leases);
3. reads each node's telemetry from the hub when there is one (latest sample,
   the last minute of samples, push arrival times);
4. scores every node (``aether.core.risk.assess``): the built-in rules, then the
   cluster's risk plugins (``aether.plugins``), each one more rule ``plugin.NAME``;
   a plugin that traps, runs out of fuel or memory, passes its deadline or
   answers garbage is skipped, its reason in the assessment's ``inputs``
   (``plugin.NAME: {"skipped": ...}``);
5. writes an assessment row when a node's status or root cause changed, and at
   least once a minute.

The signal routes call :meth:`RiskEngine.wake` so a new signal is scored at
once instead of at the next tick. Retention: signals and assessments older
than ``retention`` (7 days by default) are deleted once an hour.

On a new leader the history is rebuilt from the records, so a failover loses
nothing. Served at ``/metrics`` (by the leader): ``node_risk_level{node}``,
0 LOW, 1 MEDIUM, 2 HIGH, 3 CRITICAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Gauge

from aether.core.plugin_abi import encode, note_skips, risk_input, risk_rule
from aether.core.risk import (
    CRASH_WINDOW,
    HISTORY_SECONDS,
    Health,
    RuleResult,
    Signal,
    combine,
    effective,
    fold_signals,
    rule_results,
)
from aether.model.risk import RiskAssessment, RiskStatus
from aether.model.telemetry import ClusterSample, NodePoint
from aether.plugins.host import PluginHost
from aether.plugins.wasm import LoadedPlugin
from aether.store.election import Leadership
from aether.store.records.repo import utc
from aether.store.records.schema import RiskAssessmentRow, SignalRow

if TYPE_CHECKING:
    from aether.server.context import ServerContext

__all__ = [
    "LAG_SECONDS",
    "RETENTION_SECONDS",
    "REWRITE_SECONDS",
    "RiskEngine",
    "TelemetrySource",
    "assessment_of",
    "signal_of",
]

log = logging.getLogger("aether.risk")

LAG_SECONDS = 10.0  # signals created this recently are read again (late commits)
REWRITE_SECONDS = 60.0  # an unchanged verdict is written again after this long
RETENTION_SECONDS = 7 * 86400.0
PRUNE_EVERY = 3600.0


class TelemetrySource(Protocol):
    """What the risk engine needs from the telemetry hub (``ctx.telemetry``)."""

    def latest(self) -> ClusterSample | None: ...

    def node_history(self, node: str, seconds: float | None = None) -> list[NodePoint]: ...

    def node_arrivals(self, node: str) -> list[float]: ...


def signal_of(row: SignalRow) -> Signal:
    return Signal(id=row.id, kind=row.kind, value=row.value, source=row.source, ts=row.ts)


def assessment_of(row: RiskAssessmentRow) -> RiskAssessment:
    return RiskAssessment.model_validate(row, from_attributes=True)


def health_of(hub: TelemetrySource | None, node: str, now: float) -> Health:
    """The node's figures for the health rules (empty without a hub or samples)."""
    if hub is None:
        return Health()
    latest = hub.latest()
    sample = latest.nodes.get(node) if latest is not None else None
    restarts = [(p.ts, p.restarts) for p in hub.node_history(node, CRASH_WINDOW)]
    arrivals = hub.node_arrivals(node)
    if sample is None:
        return Health(arrivals=arrivals, restarts=restarts)
    return Health(
        memory_fraction=sample.memory_fraction,
        disk_fraction=sample.disk_fraction,
        stale=sample.stale,
        age=sample.age,
        arrivals=arrivals,
        restarts=restarts,
    )


class RiskEngine:
    def __init__(
        self,
        ctx: ServerContext,
        *,
        interval: float = 1.0,
        retention: float = RETENTION_SECONDS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.ctx = ctx
        self.on_change: Callable[[], None] | None = None  # a node's status changed
        self.interval = interval
        self.retention = retention
        self.leading = False
        self.passes = 0
        self._fresh = False  # a pass has run since this server became leader
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._history: dict[str, list[Signal]] = {}
        self._latest: dict[str, RiskAssessment] = {}
        self._written: dict[str, tuple[RiskStatus, str, float]] = {}
        self._last_id = 0
        self._seen: dict[int, datetime] = {}  # ids read within the lag window
        self._loaded = False
        self._pruned_at = 0.0
        self._gauge: Gauge | None = None
        self.plugins = PluginHost(ctx.records, "risk")
        self._skipped: dict[str, str] = {}  # plugin -> the reason last logged
        if registry is not None:
            self._gauge = Gauge(
                "node_risk_level",
                "Risk of each node as scored by the leader: 0 LOW, 1 MEDIUM, 2 HIGH, 3 CRITICAL.",
                ["node"],
                registry=registry,
            )

    # -- what routes and the controller read ---------------------------------------

    @property
    def serving(self) -> bool:
        """True when this server leads and has scored the nodes since: its view is current."""
        return self.leading and self._fresh

    def assessments(self) -> dict[str, RiskAssessment]:
        """The latest verdict per node (in memory; empty unless this server leads)."""
        return dict(self._latest)

    def assessment(self, node: str) -> RiskAssessment | None:
        return self._latest.get(node)

    def wake(self) -> None:
        """Score now rather than at the next tick (a signal was just recorded)."""
        self._wake.set()

    # -- the loop -------------------------------------------------------------------

    async def run(self, leadership: Leadership) -> None:
        """The leader loop: a pass every ``interval`` seconds, or at once when woken."""
        self.leading = True
        self._loaded = False  # rebuild the history: another leader may have read signals
        try:
            while not leadership.lost.is_set():
                self._wake.clear()
                now = time.time()
                try:
                    await self.evaluate(now)
                    self._fresh = True
                    if now - self._pruned_at >= PRUNE_EVERY:
                        self._pruned_at = now
                        await self.ctx.records.prune_risk_history(
                            utc(now - self.retention), now - self.retention
                        )
                except Exception:
                    log.exception("risk pass failed; trying again")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval):
                        await self._wake.wait()
        finally:
            self.leading = False
            self._fresh = False
            self._latest = {}
            if self._gauge is not None:
                self._gauge.clear()

    async def evaluate(self, now: float) -> dict[str, RiskAssessment]:
        """One pass (see the module docstring); the verdicts by node."""
        async with self._lock:
            await self._ingest(now)
            node_kvs, _ = await self.ctx.store.range("nodes/")
            live = {kv.key[len("nodes/") :] for kv in node_kvs}
            hub: TelemetrySource | None = self.ctx.telemetry
            results = await self._assess(sorted(live | set(self._history)), hub, now)
            await self._record(results, now)
            if self._gauge is not None:
                for gone in set(self._latest) - set(results):
                    with contextlib.suppress(KeyError):
                        self._gauge.remove(gone)
                for node, verdict in results.items():
                    self._gauge.labels(node).set(verdict.status.rank)
            self._latest = results
            self.passes += 1
            return dict(results)

    async def _assess(
        self, nodes: Sequence[str], hub: TelemetrySource | None, now: float
    ) -> dict[str, RiskAssessment]:
        """The built-in rules, then the risk plugins, per node (see the module docstring)."""
        healths = {node: health_of(hub, node, now) for node in nodes}
        builtin = {
            node: rule_results(self._history.get(node, []), healths[node], now) for node in nodes
        }
        extra: dict[str, list[RuleResult]] = {node: [] for node in nodes}
        skips: dict[str, dict[str, str]] = {node: {} for node in nodes}
        plugins = await self.plugins.load()
        if plugins:
            batch: list[tuple[str, LoadedPlugin, bytes]] = []
            for node in nodes:
                payload = encode(
                    risk_input(
                        node,
                        now,
                        effective(self._history.get(node, [])),
                        healths[node],
                        builtin[node],
                    )
                )
                batch.extend((node, plugin, payload) for plugin in plugins)
            outcomes = await self.plugins.evaluate([(p, payload) for _, p, payload in batch])
            for (node, _, _), outcome in zip(batch, outcomes, strict=True):
                verdict = risk_rule(outcome)
                if isinstance(verdict, str):
                    skips[node][outcome.name] = verdict
                    if self._skipped.get(outcome.name) != verdict:  # logged once per reason
                        log.warning("risk plugin %s skipped: %s", outcome.name, verdict)
                    self._skipped[outcome.name] = verdict
                else:
                    extra[node].append(verdict)
        return {
            node: note_skips(combine(node, [*builtin[node], *extra[node]], now), skips[node])
            for node in nodes
        }

    async def _ingest(self, now: float) -> None:
        records = self.ctx.records
        observed_since = now - HISTORY_SECONDS
        rows: Sequence[SignalRow]
        if not self._loaded:
            rows = await records.read_signals(0, observed_since=observed_since)
            self._history, self._seen, self._last_id = {}, {}, 0
            self._written = {
                row.node: (RiskStatus(row.status), row.root_cause, row.ts)
                for row in await records.latest_risk_assessments()
            }
            self._loaded = True
        else:
            rows = await records.read_signals(
                self._last_id,
                created_since=utc(now - LAG_SECONDS),
                observed_since=observed_since,
            )
        new: dict[str, list[Signal]] = defaultdict(list)
        for row in rows:
            if row.id in self._seen:
                continue
            self._seen[row.id] = row.created_at
            self._last_id = max(self._last_id, row.id)
            new[row.node].append(signal_of(row))
        cutoff = utc(now - 2 * LAG_SECONDS)
        self._seen = {i: created for i, created in self._seen.items() if created >= cutoff}
        for node in set(self._history) | set(new):
            folded = fold_signals(self._history.get(node, []), new.get(node, []), now=now)
            if folded:
                self._history[node] = folded
            else:
                self._history.pop(node, None)

    async def _record(self, results: dict[str, RiskAssessment], now: float) -> None:
        due: list[dict[str, Any]] = []
        for node, verdict in results.items():
            last = self._written.get(node)
            if (
                last is None
                or last[0] is not verdict.status
                or last[1] != verdict.root_cause
                or now - last[2] >= REWRITE_SECONDS
            ):
                due.append(verdict.model_dump(mode="json"))
        await self.ctx.records.add_risk_assessments(due)
        changed = False
        for row in due:
            last = self._written.get(row["node"])
            changed = changed or last is None or last[0] is not RiskStatus(row["status"])
            self._written[row["node"]] = (RiskStatus(row["status"]), row["root_cause"], now)
        if changed and self.on_change is not None:
            self.on_change()  # the controller acts on a new verdict now, not on its next tick

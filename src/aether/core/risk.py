"""Risk rules: pure functions from a node's signals and telemetry to a verdict.

No I/O and no clock: the risk engine (``aether.server.leader.risk``) reads signals
from the records database and figures from the telemetry hub, and passes
``now``. Every rule returns a :class:`RuleResult` with its status, root cause,
confidence and the figures it looked at; :func:`assess` combines them.

Market rules (over the node's spot-price history)
-------------------------------------------------

The *price window* is the newest ``PRICE_POINTS`` (10) spot prices observed
within the last ``PRICE_WINDOW`` (900 s = 15 min), ordered by observation time.
With ``p_1 .. p_n`` the prices in that window (oldest first):

- **trend** = ``(p_n - p_1) / p_1`` -- the relative change over the window
  (0.25 means the price rose by 25 %);
- **volatility** = ``100 * pstdev(p) / mean(p)`` -- the coefficient of
  variation in percent (population standard deviation).

Both need at least ``MIN_PRICE_POINTS`` (3) prices; with fewer the market is
LOW "Stable" with a low confidence (see below).

The rules, when each fires, its status and root cause are in one table, in
docs/concepts.md ("Signals and risk"): change it with the rule.

A rule that does not fire is LOW "Stable". A rebalance signal with value 0
withdraws a notice; a ``clear`` signal drops every earlier signal of its
source for that node (``aether drill stop`` records one with source "drill").

Combining
---------

The worst status wins; among rules with that status the first in the table
(the order of ``RULES`` here) gives the root cause and the rule. Every rule's
result is kept in the assessment's ``inputs``
(``{rule: {status, root_cause, confidence, ...figures}}``).

Confidence
----------

Each rule reports how much evidence it had, 0..1:

- market.rebalance: 1 when a rebalance signal (notice or withdrawal) is in the
  last hour, else 0;
- market.price_trend and market.volatility: ``min(1, n / PRICE_POINTS)`` for
  ``n`` prices in the window (1 price: 0.1; a full window: 1);
- market.capacity: 1 with a score in the last 15 min, else 0;
- health.memory and health.disk: 1 for a fresh telemetry sample, 0.5 for a
  stale one (the last known figures), 0 without telemetry;
- health.heartbeat: 1 when stale; else ``min(1, intervals / 30)``;
- health.crash_loop: 1 when it fires; else ``min(1, samples / 30)`` for the
  telemetry samples in its 60 s window.

The assessment's confidence is, when the status is above LOW, the noisy-OR of
the rules that reached it: ``1 - prod(1 - c_i)`` (agreeing rules add evidence);
when LOW, the mean of every rule's confidence (the share of the checks that had
data: "Stable" with no data at all is a guess, confidence 0).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aether.model.risk import RiskAssessment, RiskStatus

__all__ = [
    "CAPACITY_HIGH",
    "CAPACITY_WINDOW",
    "CRASH_RESTARTS",
    "CRASH_WINDOW",
    "DISK_CRITICAL",
    "DISK_HIGH",
    "DRILL_BASE_PRICE",
    "DRILL_POINTS",
    "DRILL_SPIKE",
    "HISTORY_SECONDS",
    "JITTER_MEDIUM",
    "JITTER_MIN_INTERVALS",
    "JITTER_WINDOW",
    "MEMORY_CRITICAL",
    "MEMORY_HIGH",
    "MIN_PRICE_POINTS",
    "PRICE_POINTS",
    "PRICE_WINDOW",
    "REBALANCE_HOLD",
    "RULES",
    "TREND_CRITICAL",
    "VOLATILITY_CRITICAL",
    "Health",
    "PriceStats",
    "RuleResult",
    "Signal",
    "assess",
    "combine",
    "drill_series",
    "effective",
    "fold_signals",
    "price_stats",
    "price_window",
    "restart_increase",
    "rule_results",
    "stable",
]

PRICE_POINTS = 10  # the newest N spot prices ...
PRICE_WINDOW = 900.0  # ... observed within the last 15 minutes
MIN_PRICE_POINTS = 3  # fewer: no trend or volatility
TREND_CRITICAL = 0.2  # relative change over the window
VOLATILITY_CRITICAL = 5.0  # coefficient of variation, percent
REBALANCE_HOLD = 3600.0  # an uncleared notice counts for an hour
CAPACITY_WINDOW = 900.0
CAPACITY_HIGH = 0.2  # below: little spare capacity in the pool
MEMORY_HIGH, MEMORY_CRITICAL = 0.90, 0.97
DISK_HIGH, DISK_CRITICAL = 0.90, 0.97
JITTER_WINDOW = 60.0
JITTER_MIN_INTERVALS = 5
JITTER_MEDIUM = 0.5  # seconds of standard deviation between pushes
JITTER_FULL_EVIDENCE = 30  # intervals (or samples) that make a heartbeat/crash verdict sure
CRASH_WINDOW = 60.0
CRASH_RESTARTS = 3
# how long the engine keeps a node's signals in memory (the longest rule window)
HISTORY_SECONDS = max(PRICE_WINDOW, REBALANCE_HOLD, CAPACITY_WINDOW)

STABLE = "Stable"


@dataclass(frozen=True, slots=True)
class Signal:
    """One stored signal as the rules see it (``id`` orders them as they were recorded)."""

    id: int
    kind: str  # spot_price | rebalance | capacity | clear
    value: float
    source: str
    ts: float  # when it was observed


@dataclass(frozen=True, slots=True)
class Health:
    """A node's telemetry as the health rules see it; ``None`` where there is none."""

    memory_fraction: float | None = None
    disk_fraction: float | None = None
    stale: bool | None = None
    age: float | None = None  # seconds since the node's last push
    arrivals: Sequence[float] = ()  # server receive times of the node's pushes
    restarts: Sequence[tuple[float, int]] = ()  # (sample ts, summed restart counter)


@dataclass(frozen=True, slots=True)
class RuleResult:
    rule: str
    status: RiskStatus
    root_cause: str
    confidence: float
    figures: dict[str, Any] = field(default_factory=dict)

    def as_input(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "root_cause": self.root_cause,
            "confidence": round(self.confidence, 3),
            **self.figures,
        }


@dataclass(frozen=True, slots=True)
class PriceStats:
    points: int
    first: float | None
    last: float | None
    mean: float | None
    trend: float | None  # (last - first) / first; None below MIN_PRICE_POINTS
    volatility: float | None  # 100 * pstdev / mean, percent; None below MIN_PRICE_POINTS

    def figures(self) -> dict[str, Any]:
        return {
            "points": self.points,
            "first": _r(self.first),
            "last": _r(self.last),
            "trend": _r(self.trend),
            "volatility": _r(self.volatility),
        }


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def stable(rule: str, confidence: float, **figures: Any) -> RuleResult:
    return RuleResult(rule, RiskStatus.LOW, STABLE, confidence, figures)


# -- signal history ------------------------------------------------------------------


def fold_signals(
    history: Iterable[Signal], new: Iterable[Signal], *, now: float, keep: float = HISTORY_SECONDS
) -> list[Signal]:
    """A node's history with ``new`` signals added, in id order.

    Duplicates (same id) count once; a ``clear`` signal removes every signal of
    its source with a smaller id, including ones that arrive later; signals
    observed more than ``keep`` seconds before ``now`` are dropped.
    """
    by_id = {s.id: s for s in history}
    by_id.update((s.id, s) for s in new)
    cutoff = now - keep
    return [s for s in effective(by_id.values()) if s.ts >= cutoff]


def effective(signals: Iterable[Signal]) -> list[Signal]:
    """In id order, without the signals a later ``clear`` of their source dropped."""
    ordered = sorted(signals, key=lambda s: s.id)
    cleared: dict[str, int] = {}  # source -> id of its newest clear
    for s in ordered:
        if s.kind == "clear":
            cleared[s.source] = max(cleared.get(s.source, 0), s.id)
    return [s for s in ordered if s.kind == "clear" or s.id > cleared.get(s.source, 0)]


def price_window(signals: Iterable[Signal], now: float) -> list[float]:
    """The prices the market rules look at, oldest first (see the module docstring)."""
    prices = sorted(
        (s for s in signals if s.kind == "spot_price" and s.ts >= now - PRICE_WINDOW),
        key=lambda s: (s.ts, s.id),
    )
    return [s.value for s in prices[-PRICE_POINTS:]]


def price_stats(prices: Sequence[float]) -> PriceStats:
    n = len(prices)
    if n == 0:
        return PriceStats(0, None, None, None, None, None)
    mean = statistics.fmean(prices)
    first, last = prices[0], prices[-1]
    if n < MIN_PRICE_POINTS:
        return PriceStats(n, first, last, mean, None, None)
    trend = (last - first) / first if first > 0 else None
    volatility = 100.0 * statistics.pstdev(prices) / mean if mean > 0 else None
    return PriceStats(n, first, last, mean, trend, volatility)


def _latest(signals: Iterable[Signal], kind: str, since: float) -> Signal | None:
    found = [s for s in signals if s.kind == kind and s.ts >= since]
    return max(found, key=lambda s: (s.ts, s.id)) if found else None


def restart_increase(series: Sequence[tuple[float, int]]) -> int:
    """How much a restart counter rose: the sum of the positive steps (a reset is not a rise)."""
    ordered = sorted(series)
    return sum(max(0, b[1] - a[1]) for a, b in itertools.pairwise(ordered))


# -- the rules ---------------------------------------------------------------------------


def _rebalance(signals: Sequence[Signal], health: Health, now: float) -> RuleResult:
    latest = _latest(signals, "rebalance", now - REBALANCE_HOLD)
    if latest is None:
        return stable("market.rebalance", 0.0, notice=False)
    age = round(now - latest.ts, 1)
    figures = {"notice": latest.value > 0, "source": latest.source, "age": age}
    if latest.value > 0:
        return RuleResult(
            "market.rebalance", RiskStatus.CRITICAL, "Cloud Provider Signal", 1.0, figures
        )
    return stable("market.rebalance", 1.0, **figures)


def _price_confidence(points: int) -> float:
    return min(1.0, points / PRICE_POINTS)


def _price_rule(
    name: str, figure: Literal["trend", "volatility"], threshold: float, cause: str
) -> Callable[[Sequence[Signal], Health, float], RuleResult]:
    """A market rule: CRITICAL when one figure of the price window passes ``threshold``."""

    def rule(signals: Sequence[Signal], health: Health, now: float) -> RuleResult:
        stats = price_stats(price_window(signals, now))
        confidence = _price_confidence(stats.points)
        figures = {**stats.figures(), "threshold": threshold}
        value: float | None = getattr(stats, figure)
        if value is not None and value > threshold:
            return RuleResult(name, RiskStatus.CRITICAL, cause, confidence, figures)
        return stable(name, confidence, **figures)

    return rule


_price_trend = _price_rule("market.price_trend", "trend", TREND_CRITICAL, "Price Spike Detected")
_volatility = _price_rule(
    "market.volatility", "volatility", VOLATILITY_CRITICAL, "Market Instability"
)


def _capacity(signals: Sequence[Signal], health: Health, now: float) -> RuleResult:
    latest = _latest(signals, "capacity", now - CAPACITY_WINDOW)
    if latest is None:
        return stable("market.capacity", 0.0, score=None, threshold=CAPACITY_HIGH)
    figures = {"score": round(latest.value, 4), "threshold": CAPACITY_HIGH}
    if latest.value < CAPACITY_HIGH:
        return RuleResult("market.capacity", RiskStatus.HIGH, "Low Spare Capacity", 1.0, figures)
    return stable("market.capacity", 1.0, **figures)


def _pressure(
    rule: str, cause: str, value: float | None, stale: bool | None, high: float, critical: float
) -> RuleResult:
    if value is None:
        return stable(rule, 0.0, fraction=None)
    confidence = 0.5 if stale else 1.0
    figures = {"fraction": round(value, 4), "high": high, "critical": critical}
    if value >= critical:
        return RuleResult(rule, RiskStatus.CRITICAL, cause, confidence, figures)
    if value >= high:
        return RuleResult(rule, RiskStatus.HIGH, cause, confidence, figures)
    return stable(rule, confidence, **figures)


def _memory(signals: Sequence[Signal], health: Health, now: float) -> RuleResult:
    return _pressure(
        "health.memory",
        "Memory Pressure",
        health.memory_fraction,
        health.stale,
        MEMORY_HIGH,
        MEMORY_CRITICAL,
    )


def _disk(signals: Sequence[Signal], health: Health, now: float) -> RuleResult:
    return _pressure(
        "health.disk", "Disk Pressure", health.disk_fraction, health.stale, DISK_HIGH, DISK_CRITICAL
    )


def _heartbeat(signals: Sequence[Signal], health: Health, now: float) -> RuleResult:
    arrivals = sorted(t for t in health.arrivals if t >= now - JITTER_WINDOW)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    jitter = statistics.pstdev(gaps) if len(gaps) >= JITTER_MIN_INTERVALS else None
    figures = {
        "intervals": len(gaps),
        "jitter": _r(jitter),
        "threshold": JITTER_MEDIUM,
        "stale": health.stale,
        "age": _r(health.age, 2),
    }
    if health.stale:
        return RuleResult("health.heartbeat", RiskStatus.HIGH, "Telemetry Stale", 1.0, figures)
    confidence = min(1.0, len(gaps) / JITTER_FULL_EVIDENCE)
    if jitter is not None and jitter > JITTER_MEDIUM:
        return RuleResult(
            "health.heartbeat", RiskStatus.MEDIUM, "Heartbeat Jitter", confidence, figures
        )
    return stable("health.heartbeat", confidence, **figures)


def _crash_loop(signals: Sequence[Signal], health: Health, now: float) -> RuleResult:
    series = [(ts, n) for ts, n in health.restarts if ts >= now - CRASH_WINDOW]
    rise = restart_increase(series)
    figures = {"restarts": rise, "samples": len(series), "threshold": CRASH_RESTARTS}
    if rise >= CRASH_RESTARTS:
        return RuleResult("health.crash_loop", RiskStatus.HIGH, "Crash Loop", 1.0, figures)
    return stable("health.crash_loop", min(1.0, len(series) / JITTER_FULL_EVIDENCE), **figures)


Rule = Callable[[Sequence[Signal], Health, float], RuleResult]

# In order of precedence: on a tie of status, the earlier rule names the root cause.
RULES: tuple[Rule, ...] = (
    _rebalance,
    _price_trend,
    _volatility,
    _capacity,
    _memory,
    _disk,
    _heartbeat,
    _crash_loop,
)


def combine(node: str, results: Sequence[RuleResult], now: float) -> RiskAssessment:
    """The worst status wins; the first rule with it gives the root cause (module docstring)."""
    worst = max((r.status for r in results), key=lambda s: s.rank, default=RiskStatus.LOW)
    inputs = {r.rule: r.as_input() for r in results}
    if worst is RiskStatus.LOW:
        confidence = statistics.fmean(r.confidence for r in results) if results else 0.0
        return RiskAssessment(
            node=node,
            status=RiskStatus.LOW,
            confidence=_unit(confidence),
            root_cause=STABLE,
            rule="stable",
            inputs=inputs,
            ts=now,
        )
    deciding = [r for r in results if r.status is worst]
    confidence = 1.0 - math.prod(1.0 - r.confidence for r in deciding)
    return RiskAssessment(
        node=node,
        status=worst,
        confidence=_unit(confidence),
        root_cause=deciding[0].root_cause,
        rule=deciding[0].rule,
        inputs=inputs,
        ts=now,
    )


def _unit(value: float) -> float:
    return round(min(1.0, max(0.0, value)), 3)


def rule_results(signals: Sequence[Signal], health: Health | None, now: float) -> list[RuleResult]:
    """Every built-in rule over one node's signals (``clear`` applied) and telemetry."""
    health = health or Health()
    signals = effective(signals)
    return [rule(signals, health, now) for rule in RULES]


def assess(
    node: str,
    signals: Sequence[Signal],
    health: Health | None,
    now: float,
    plugins: Sequence[RuleResult] = (),
) -> RiskAssessment:
    """Every rule over one node's signals (``clear`` applied) and telemetry, then the
    risk plugins' verdicts (``plugin.NAME``, :mod:`aether.core.plugin_abi`), which rank
    after the built-in rules on a tie."""
    return combine(node, [*rule_results(signals, health, now), *plugins], now)


# -- the fire drill ----------------------------------------------------------------------

DRILL_POINTS = 10
DRILL_SPIKE_POINTS = 4  # the newest points of the series carry the spike
DRILL_SPIKE = 1.6  # +60 %: trend 0.6 (> 0.2), volatility ~24 % (> 5)
DRILL_BASE_PRICE = 0.10  # when the node has no real price to start from


def drill_series(base: float, now: float) -> list[tuple[float, float]]:
    """The fire drill's spot prices as (ts, price): one a second up to ``now``,
    ``base`` for the first six, ``base * 1.6`` for the last four."""
    spike = round(base * DRILL_SPIKE, 6)
    return [
        (now - (DRILL_POINTS - 1 - i), base if i < DRILL_POINTS - DRILL_SPIKE_POINTS else spike)
        for i in range(DRILL_POINTS)
    ]

"""The risk rules, table-driven: each root cause, thresholds on both sides, combining."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from aether.core.risk import (
    CAPACITY_WINDOW,
    CRASH_WINDOW,
    HISTORY_SECONDS,
    PRICE_POINTS,
    PRICE_WINDOW,
    REBALANCE_HOLD,
    RULES,
    Health,
    Signal,
    assess,
    drill_series,
    fold_signals,
    price_stats,
    price_window,
    restart_increase,
)
from aether.model.risk import RiskStatus

NOW = 1_800_000_000.0
_ids = itertools.count(1)

LOW, MEDIUM, HIGH, CRITICAL = (
    RiskStatus.LOW,
    RiskStatus.MEDIUM,
    RiskStatus.HIGH,
    RiskStatus.CRITICAL,
)


def sig(kind: str, value: float = 0.0, *, ago: float = 0.0, source: str = "api") -> Signal:
    return Signal(id=next(_ids), kind=kind, value=value, source=source, ts=NOW - ago)


def prices(*values: float, step: float = 30.0, source: str = "api") -> list[Signal]:
    """Spot prices, oldest first, ``step`` seconds apart, the newest observed now."""
    n = len(values)
    return [
        sig("spot_price", v, ago=(n - 1 - i) * step, source=source) for i, v in enumerate(values)
    ]


def arrivals(gaps: Sequence[float]) -> list[float]:
    """Push arrival times ending now with the given gaps between them."""
    times = [NOW]
    for gap in reversed(gaps):
        times.insert(0, times[0] - gap)
    return times


@dataclass(frozen=True)
class Case:
    name: str
    signals: Sequence[Signal] = ()
    health: Health | None = None
    status: RiskStatus = LOW
    root_cause: str = "Stable"
    rule: str = "stable"


CASES = [
    Case("no data at all"),
    Case(
        "rebalance notice",
        [sig("rebalance", 1.0, ago=5)],
        status=CRITICAL,
        root_cause="Cloud Provider Signal",
        rule="market.rebalance",
    ),
    Case("rebalance notice withdrawn", [sig("rebalance", 1.0, ago=60), sig("rebalance", 0.0)]),
    Case("rebalance notice older than the hold", [sig("rebalance", 1.0, ago=REBALANCE_HOLD + 1)]),
    Case(
        "rebalance notice cleared by its source",
        [sig("rebalance", 1.0, ago=5, source="drill"), sig("clear", source="drill")],
    ),
    Case(
        "price trend just above 0.2",
        prices(*[1.0] * 9, 1.21),
        status=CRITICAL,
        root_cause="Price Spike Detected",
        rule="market.price_trend",
    ),
    Case(
        "volatility just above 5 % without a trend",
        prices(*[1.0, 1.12] * 5),
        status=CRITICAL,
        root_cause="Market Instability",
        rule="market.volatility",
    ),
    Case("volatility just below 5 %", prices(*[1.0, 1.1] * 5)),
    Case("a steady price", prices(*[0.31] * 10)),
    Case("too few prices to judge a doubling", prices(1.0, 2.0)),
    Case(
        "low spare capacity",
        [sig("capacity", 0.1, ago=10)],
        status=HIGH,
        root_cause="Low Spare Capacity",
        rule="market.capacity",
    ),
    Case("capacity at the threshold", [sig("capacity", 0.2, ago=10)]),
    Case("low capacity score too old to count", [sig("capacity", 0.1, ago=CAPACITY_WINDOW + 1)]),
    Case("memory just below 0.90", health=Health(memory_fraction=0.899, stale=False)),
    Case(
        "memory at 0.90",
        health=Health(memory_fraction=0.90, stale=False),
        status=HIGH,
        root_cause="Memory Pressure",
        rule="health.memory",
    ),
    Case(
        "memory at 0.97",
        health=Health(memory_fraction=0.97, stale=False),
        status=CRITICAL,
        root_cause="Memory Pressure",
        rule="health.memory",
    ),
    Case("disk just below 0.90", health=Health(disk_fraction=0.899, stale=False)),
    Case(
        "disk at 0.90",
        health=Health(disk_fraction=0.90, stale=False),
        status=HIGH,
        root_cause="Disk Pressure",
        rule="health.disk",
    ),
    Case(
        "disk at 0.97",
        health=Health(disk_fraction=0.97, stale=False),
        status=CRITICAL,
        root_cause="Disk Pressure",
        rule="health.disk",
    ),
    Case(
        "telemetry stale",
        health=Health(memory_fraction=0.5, stale=True, age=9.0),
        status=HIGH,
        root_cause="Telemetry Stale",
        rule="health.heartbeat",
    ),
    Case(
        "jittery pushes",
        health=Health(stale=False, arrivals=arrivals([0.2, 2.0, 0.2, 2.0, 0.2, 2.0])),
        status=MEDIUM,
        root_cause="Heartbeat Jitter",
        rule="health.heartbeat",
    ),
    Case("regular pushes", health=Health(stale=False, arrivals=arrivals([1.0, 1.1, 0.9] * 10))),
    Case(
        "too few intervals to call jitter",
        health=Health(stale=False, arrivals=arrivals([0.2, 2.0, 0.2, 2.0])),
    ),
    Case(
        "three restarts within a minute",
        health=Health(stale=False, restarts=[(NOW - 50, 1), (NOW - 30, 2), (NOW - 10, 4)]),
        status=HIGH,
        root_cause="Crash Loop",
        rule="health.crash_loop",
    ),
    Case("two restarts", health=Health(restarts=[(NOW - 50, 1), (NOW - 10, 3)])),
    Case(
        "a counter reset is not a restart",
        health=Health(restarts=[(NOW - 50, 9), (NOW - 30, 0), (NOW - 10, 2)]),
    ),
    Case(
        "restarts older than the window",
        health=Health(restarts=[(NOW - CRASH_WINDOW - 30, 0), (NOW - CRASH_WINDOW - 1, 5)]),
    ),
    Case(
        "worst wins: memory HIGH over jitter MEDIUM",
        health=Health(
            memory_fraction=0.93,
            stale=False,
            arrivals=arrivals([0.2, 2.0, 0.2, 2.0, 0.2, 2.0]),
        ),
        status=HIGH,
        root_cause="Memory Pressure",
        rule="health.memory",
    ),
    Case(
        "worst wins: a price spike over low capacity",
        [*prices(*[1.0] * 9, 1.5), sig("capacity", 0.05)],
        status=CRITICAL,
        root_cause="Price Spike Detected",
        rule="market.price_trend",
    ),
    Case(
        "on a tie the earlier rule names the cause: rebalance before memory",
        [sig("rebalance", 1.0)],
        health=Health(memory_fraction=0.99, stale=False),
        status=CRITICAL,
        root_cause="Cloud Provider Signal",
        rule="market.rebalance",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rules(case: Case) -> None:
    result = assess("n1", list(case.signals), case.health, NOW)
    assert (result.status, result.root_cause, result.rule) == (
        case.status,
        case.root_cause,
        case.rule,
    ), result.inputs
    assert result.node == "n1" and result.ts == NOW
    # every rule's verdict and figures are kept, the deciding one among them
    assert len(result.inputs) == len(RULES)
    if case.rule != "stable":
        assert result.inputs[case.rule]["status"] == case.status.value
        assert result.inputs[case.rule]["root_cause"] == case.root_cause
    assert 0.0 <= result.confidence <= 1.0


@pytest.mark.parametrize(
    ("values", "trend_status", "volatility_status"),
    [
        ([1.0] * 9 + [1.19], LOW, CRITICAL),  # trend 0.19; one outlier: CV 5.4 %
        ([1.0] * 9 + [1.21], CRITICAL, CRITICAL),
        ([1.0, 1.1] * 5, LOW, LOW),  # trend 0.1, CV 4.76 %
        ([1.0, 1.12] * 5, LOW, CRITICAL),  # trend 0.12, CV 5.66 %
        ([2.0] * 9 + [1.0], LOW, CRITICAL),  # a price fall is no spike
    ],
)
def test_price_rules_on_both_sides_of_their_thresholds(
    values: list[float], trend_status: RiskStatus, volatility_status: RiskStatus
) -> None:
    inputs = assess("n", prices(*values), None, NOW).inputs
    assert inputs["market.price_trend"]["status"] == trend_status.value
    assert inputs["market.volatility"]["status"] == volatility_status.value


def test_trend_and_volatility_are_computed_from_the_window() -> None:
    stats = price_stats([1.0, 1.0, 1.0, 1.5])
    assert stats.points == 4
    assert stats.trend == pytest.approx(0.5)  # (1.5 - 1.0) / 1.0
    # mean 1.125, population stdev 0.2165: CV 19.245 %
    assert stats.volatility == pytest.approx(100 * 0.21650635 / 1.125, rel=1e-6)
    few = price_stats([1.0, 3.0])
    assert few.points == 2 and few.trend is None and few.volatility is None
    assert price_stats([]).points == 0


def test_the_window_is_the_newest_ten_prices_of_the_last_fifteen_minutes() -> None:
    old = sig("spot_price", 100.0, ago=PRICE_WINDOW + 1)  # outside the window
    series = prices(*[float(i) for i in range(1, 13)], step=10)  # 12 points
    window = price_window([old, *series], NOW)
    assert window == [float(i) for i in range(3, 13)]
    assert len(window) == PRICE_POINTS
    # observation time orders the window, not arrival
    late = Signal(id=10_000, kind="spot_price", value=7.5, source="api", ts=NOW - 1000.0 + 900.5)
    assert price_window([late, *prices(1.0, 2.0, step=1)], NOW) == [7.5, 1.0, 2.0]


def test_too_few_points_is_low_with_low_confidence() -> None:
    result = assess("n", prices(1.0, 5.0), None, NOW)
    assert result.status is LOW and result.root_cause == "Stable"
    assert result.inputs["market.price_trend"]["confidence"] == pytest.approx(0.2)
    assert result.inputs["market.price_trend"]["trend"] is None
    assert result.confidence < 0.1


def test_confidence_grows_with_evidence_and_agreement() -> None:
    # LOW: the mean of every rule's evidence
    nothing = assess("n", [], None, NOW)
    assert nothing.confidence == 0.0
    full_market = assess("n", [*prices(*[1.0] * 10), sig("rebalance", 0.0)], None, NOW)
    assert full_market.status is LOW
    assert full_market.confidence == pytest.approx(3 / len(RULES), abs=1e-3)
    # above LOW: the noisy-OR of the rules that reached the status
    one = assess("n", [], Health(memory_fraction=0.99, stale=True, age=8.0), NOW)
    assert one.rule == "health.memory"  # the stale verdict is HIGH, memory CRITICAL
    assert one.confidence == pytest.approx(0.5)
    two = assess("n", [], Health(memory_fraction=0.99, disk_fraction=0.99, stale=True), NOW)
    assert two.status is CRITICAL and two.rule == "health.memory"
    assert two.confidence == pytest.approx(0.75)  # 1 - (1 - 0.5) * (1 - 0.5)
    sparse_spike = assess("n", prices(1.0, 1.0, 1.5), None, NOW)
    assert sparse_spike.status is CRITICAL
    assert sparse_spike.confidence == pytest.approx(1 - 0.7 * 0.7)  # two rules at 0.3 each


def test_fold_dedupes_clears_by_source_and_forgets_old_signals() -> None:
    a = Signal(1, "spot_price", 1.0, "drill", NOW - 5)
    b = Signal(2, "spot_price", 1.1, "api", NOW - 4)
    c = Signal(3, "rebalance", 1.0, "drill", NOW - 3)
    clear = Signal(4, "clear", 0.0, "drill", NOW - 2)
    after = Signal(5, "spot_price", 1.2, "drill", NOW - 1)
    history = fold_signals([], [a, b, c], now=NOW)
    assert history == [a, b, c]
    assert fold_signals(history, [a, b], now=NOW) == history  # read twice, counted once
    cleared = fold_signals(history, [clear, after], now=NOW)
    assert cleared == [b, clear, after]  # the drill's earlier signals are gone, api's stay
    # a drill signal with a smaller id that commits late is cleared as well
    late = Signal(0, "spot_price", 9.9, "drill", NOW - 6)
    assert fold_signals(cleared, [late], now=NOW) == cleared
    old = Signal(6, "capacity", 0.5, "api", NOW - HISTORY_SECONDS - 1)
    assert old not in fold_signals(cleared, [old], now=NOW)


def test_restart_increase_sums_rises_only() -> None:
    assert restart_increase([]) == 0
    assert restart_increase([(3.0, 5), (1.0, 1), (2.0, 2)]) == 4  # ordered by time
    assert restart_increase([(1.0, 4), (2.0, 0), (3.0, 1)]) == 1


def test_the_fire_drill_series_is_critical_on_every_market_rule() -> None:
    series = drill_series(0.25, NOW)
    assert [ts for ts, _ in series] == [NOW - i for i in range(9, -1, -1)]
    assert series[0][1] == 0.25 and series[-1][1] == pytest.approx(0.4)
    spike = [Signal(next(_ids), "spot_price", p, "drill", ts) for ts, p in series]
    notice = sig("rebalance", 1.0, source="drill")
    result = assess("n", [*spike, notice], None, NOW)
    assert (result.status, result.root_cause) == (CRITICAL, "Cloud Provider Signal")
    assert result.inputs["market.price_trend"]["trend"] == pytest.approx(0.6)
    assert result.inputs["market.volatility"]["status"] == "CRITICAL"
    assert result.confidence == 1.0
    # without the notice the spike itself decides
    assert assess("n", spike, None, NOW).root_cause == "Price Spike Detected"
    # the drill stopped: its signals no longer count
    stopped = fold_signals([*spike, notice], [sig("clear", source="drill")], now=NOW)
    assert assess("n", stopped, None, NOW).root_cause == "Stable"

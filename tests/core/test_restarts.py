"""The backoff policy of `aether up`'s supervisor."""

from __future__ import annotations

import pytest

from aether.core.restarts import Backoff, after_exit, describe_exit


def test_quick_exits_double_the_delay_up_to_the_cap() -> None:
    policy = Backoff(initial=1.0, factor=2.0, cap=10.0, healthy_after=30.0)
    streak, delays = 0, []
    for _ in range(6):
        delay, streak = after_exit(policy, streak, ran_for=0.5)
        delays.append(delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert streak == 6


def test_a_healthy_run_resets_the_streak() -> None:
    policy = Backoff(initial=1.0, cap=30.0, healthy_after=30.0)
    delay, streak = after_exit(policy, 5, ran_for=29.9)
    assert (delay, streak) == (30.0, 6)  # 2**5 = 32, capped
    delay, streak = after_exit(policy, streak, ran_for=30.0)
    assert (delay, streak) == (1.0, 1)


def test_a_huge_streak_stays_at_the_cap() -> None:
    assert after_exit(Backoff(cap=7.0), 10_000, ran_for=0.0) == (7.0, 10_001)


@pytest.mark.parametrize(
    ("initial", "factor", "cap", "healthy"),
    [(0.0, 2.0, 1.0, 1.0), (2.0, 2.0, 1.0, 1.0), (1.0, 0.5, 2.0, 1.0), (1.0, 2.0, 2.0, 0.0)],
)
def test_nonsense_policies_are_refused(
    initial: float, factor: float, cap: float, healthy: float
) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial=initial, factor=factor, cap=cap, healthy_after=healthy)


def test_exits_are_described_as_an_operator_reads_them() -> None:
    assert describe_exit(-9) == "signal 9"
    assert describe_exit(0) == "code 0"
    assert describe_exit(3) == "code 3"

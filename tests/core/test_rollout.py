"""Rollout strategies as pure functions: capacity never drops, deadlines fail, canaries wait."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from aether.core.lifecycle import Command, State
from aether.core.rollout import FAILURES_TO_FAIL, RolloutInstance, give_up, rollout_step
from aether.model.app import RolloutSpec


def _old(n: int) -> list[RolloutInstance]:
    return [RolloutInstance(f"old/{i}", State.ACTIVE, Command.ACTIVATE, 0.0, 0.0) for i in range(n)]


def _simulate(
    spec: RolloutSpec, desired: int, start_ticks: int = 1, promote_at: int | None = None
) -> tuple[list[int], int, int]:
    """Run a rollout where each new instance is ACTIVE ``start_ticks`` after placement.

    Returns the serving capacity (ACTIVE old + ACTIVE new) at each tick, the most
    new instances in flight at once, and the ticks it took.
    """
    old = _old(desired)
    new: list[RolloutInstance] = []
    now, max_in_flight, counter = 1.0, 0, 0
    capacity: list[int] = []
    for tick in range(1, 500):
        step = rollout_step(
            spec,
            desired,
            new,
            old,
            now=now,
            started_at=0.0,
            promoted=promote_at is not None and tick >= promote_at,
        )
        assert step.failed is None, step.failed
        if step.done:
            return capacity, max_in_flight, tick
        old = [i for i in old if i.key not in step.retire]
        for _ in range(step.place):
            new.append(RolloutInstance(f"new/{counter}", None, Command.LOAD, now, None))
            counter += 1
        max_in_flight = max(max_in_flight, sum(1 for i in new if i.state is not State.ACTIVE))
        capacity.append(
            sum(i.state is State.ACTIVE for i in old) + sum(i.state is State.ACTIVE for i in new)
        )
        now += 1.0
        new = [
            replace(i, state=State.ACTIVE, command=Command.ACTIVATE, active_since=now)
            if i.state is None and now - i.placed_at >= start_ticks
            else i
            for i in new
        ]
    raise AssertionError("rollout never finished")


@settings(max_examples=60, deadline=None)
@given(
    desired=st.integers(1, 12),
    max_parallel=st.integers(1, 5),
    min_healthy=st.sampled_from([0.0, 1.0, 3.0]),
    start_ticks=st.integers(1, 4),
    strategy=st.sampled_from(["rolling", "canary", "blue-green"]),
)
def test_capacity_never_drops_below_desired(
    desired: int, max_parallel: int, min_healthy: float, start_ticks: int, strategy: str
) -> None:
    spec = RolloutSpec(
        strategy=strategy,  # type: ignore[arg-type]
        max_parallel=max_parallel,
        min_healthy_time=min_healthy,
        healthy_deadline=100,
        progress_deadline=10_000,
        canary=2,
    )
    capacity, max_in_flight, _ = _simulate(spec, desired, start_ticks)
    assert min(capacity) >= desired
    if strategy == "rolling":
        assert max_in_flight <= max_parallel


def test_rolling_replaces_one_at_a_time() -> None:
    spec = RolloutSpec(strategy="rolling", max_parallel=1)
    old = _old(3)
    step = rollout_step(spec, 3, [], old, now=1, started_at=0, promoted=False)
    assert (step.place, step.retire) == (1, ())
    new = [RolloutInstance("new/0", State.ACTIVATING, Command.ACTIVATE, 1.0)]
    step = rollout_step(spec, 3, new, old, now=2, started_at=0, promoted=False)
    assert (step.place, step.retire) == (0, ())  # one in flight: wait
    new = [RolloutInstance("new/0", State.ACTIVE, Command.ACTIVATE, 1.0, 2.0)]
    step = rollout_step(spec, 3, new, old, now=2, started_at=0, promoted=False)
    assert step.place == 1 and len(step.retire) == 1


def test_min_healthy_time_holds_back_retirement() -> None:
    spec = RolloutSpec(strategy="rolling", max_parallel=3, min_healthy_time=10)
    new = [RolloutInstance(f"new/{i}", State.ACTIVE, Command.ACTIVATE, 0, 5.0) for i in range(3)]
    assert rollout_step(spec, 3, new, _old(3), now=8, started_at=0, promoted=False).retire == ()
    late = rollout_step(spec, 3, new, _old(3), now=15, started_at=0, promoted=False)
    assert len(late.retire) == 3


def test_blue_green_switches_all_at_once() -> None:
    spec = RolloutSpec(strategy="blue-green")
    step = rollout_step(spec, 4, [], _old(4), now=1, started_at=0, promoted=False)
    assert (step.place, step.retire) == (4, ())
    three = [RolloutInstance(f"n/{i}", State.ACTIVE, Command.ACTIVATE, 1, 2) for i in range(3)]
    pending = [*three, RolloutInstance("n/3", State.LOADING, Command.LOAD, 1)]
    assert rollout_step(spec, 4, pending, _old(4), now=3, started_at=0, promoted=False).retire == ()
    four = [*three, RolloutInstance("n/3", State.ACTIVE, Command.ACTIVATE, 1, 2)]
    assert (
        len(rollout_step(spec, 4, four, _old(4), now=3, started_at=0, promoted=False).retire) == 4
    )


def test_canary_waits_for_promotion_unless_auto() -> None:
    manual = RolloutSpec(strategy="canary", canary=1, auto_promote=False)
    canary = [RolloutInstance("n/0", State.ACTIVE, Command.ACTIVATE, 1, 2)]
    step = rollout_step(manual, 4, canary, _old(4), now=3, started_at=0, promoted=False)
    assert step.waiting_for_promotion and step.place == 0 and step.retire == ()
    promoted = rollout_step(manual, 4, canary, _old(4), now=3, started_at=0, promoted=True)
    assert promoted.place == 1 and len(promoted.retire) == 1
    auto = manual.model_copy(update={"auto_promote": True})
    assert rollout_step(auto, 4, canary, _old(4), now=3, started_at=0, promoted=False).place == 1
    capacity, _, _ = _simulate(manual, 4, promote_at=6)
    assert min(capacity) >= 4


def test_failures_and_deadlines_fail_the_rollout() -> None:
    spec = RolloutSpec(healthy_deadline=5, progress_deadline=50)
    stuck = [RolloutInstance("n/0", State.ACTIVATING, Command.ACTIVATE, placed_at=1)]
    assert rollout_step(spec, 2, stuck, _old(2), now=5, started_at=0, promoted=False).failed is None
    failed = rollout_step(spec, 2, stuck, _old(2), now=7, started_at=0, promoted=False).failed
    assert failed is not None and "not healthy within 5s" in failed
    slow = rollout_step(spec, 2, [], _old(2), now=60, started_at=0, promoted=False).failed
    assert slow is not None and "50s" in slow
    crashes = rollout_step(
        spec, 2, [], _old(2), now=1, started_at=0, promoted=False, failures=FAILURES_TO_FAIL
    )
    assert crashes.failed is not None


def test_done_when_new_healthy_and_old_gone() -> None:
    spec = RolloutSpec()
    new = [RolloutInstance(f"n/{i}", State.ACTIVE, Command.ACTIVATE, 0, 0) for i in range(2)]
    assert rollout_step(spec, 2, new, [], now=1, started_at=0, promoted=False).done
    retiring = [RolloutInstance("o/0", State.ACTIVE, Command.DEACTIVATE, 0, 0)]
    assert rollout_step(spec, 2, new, retiring, now=1, started_at=0, promoted=False).done


def test_give_up_at_the_first_start_failure_while_nothing_came_up() -> None:
    exited = "exited with code 1 before it was healthy; last output:\nError: boom at startup"
    silent = "health check GET /healthz: no answer within 5 s; last output:\n(none)"
    for message in (exited, silent):
        verdict = give_up(1, message, instance="instance 0 on n1", ever_active=False)
        assert verdict == f"instance 0 on n1: {message}"
        # once an instance of it came up, a failed start may be the node's: retry
        assert give_up(1, message, instance="instance 0 on n1", ever_active=True) is None
    # a failure that is not the app's own start (a download, a crash loop) is retried
    assert give_up(1, "load failed: timeout", instance="i", ever_active=False) is None
    assert give_up(2, "crash loop: exited 6 times", instance="i", ever_active=True) is None
    assert give_up(0, exited, instance="i", ever_active=False) is None
    many = give_up(FAILURES_TO_FAIL, "load failed: timeout", instance="i 2", ever_active=True)
    assert many == f"{FAILURES_TO_FAIL} instance failures; last: i 2: load failed: timeout"


def test_rollout_fails_with_the_verdict() -> None:
    spec = RolloutSpec()
    step = rollout_step(
        spec, 2, [], _old(2), now=1, started_at=0, promoted=False, failures=1, given_up="why"
    )
    assert step.failed == "why"

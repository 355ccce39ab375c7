"""The autoscaler under noisy, steady load: a tolerance band and a scale-down window.

Each test runs ``decide`` once a simulated second over minutes of seeded, jittery
load (time is passed in; nothing sleeps), the way the controller does: the
series is the app's total load spread over its current count.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from aether.core.autoscale import RECENT, ScaleDecision, decide
from aether.model.decisions import AutoscaleSpec

# the app: in_flight, target 4, an up cool-down of 1 s and a down cool-down of 3 s;
# tolerance and scale_down_window are left at their defaults
SPEC = AutoscaleSpec(
    min=1,
    max=10,
    metric="in_flight",
    target=4,
    scale_up_cooldown=1,
    scale_down_cooldown=3,
)
JITTER = 0.15  # ± per second, uniform: what 8 closed-loop clients look like second by second


@dataclass
class Run:
    """The count each second and every decision taken, with when."""

    counts: list[int] = field(default_factory=list)
    decisions: list[tuple[int, ScaleDecision]] = field(default_factory=list)

    def changes_from(self, second: int) -> list[tuple[int, ScaleDecision]]:
        return [(t, d) for t, d in self.decisions if t >= second]


def jittery(level: Callable[[int], float], seed: int, jitter: float = JITTER) -> list[float]:
    """Ten minutes of total load: ``level(second)`` times a seeded ±``jitter`` factor."""
    rng = random.Random(seed)
    return [level(i) * (1.0 + rng.uniform(-jitter, jitter)) for i in range(600)]


def simulate(spec: AutoscaleSpec, start: int, load: list[float], *, history: int = 0) -> Run:
    """One ``decide`` per second from second ``history`` on; ``load[i]`` is the total at i.

    The seconds before ``history`` are telemetry the app already had at ``start``.
    """
    current, last_up, last_down = start, None, None
    run = Run()
    for i in range(history, len(load)):
        now = float(i)
        series = [(float(t), load[t] / current) for t in range(max(0, i - 200), i + 1)]
        decision = decide(spec, current, series, last_up, last_down, now)
        if decision is not None:
            assert decision.current == current and decision.desired != current
            run.decisions.append((i, decision))
            if decision.direction == "up":
                last_up = now
            else:
                last_down = now
            current = decision.desired
        run.counts.append(current)
    return run


def test_new_settings_default_to_a_band_and_a_down_window_for_seconds() -> None:
    spec = AutoscaleSpec()
    assert spec.tolerance == 0.15 and spec.scale_down_window == 30.0
    assert AutoscaleSpec(tolerance=0, scale_down_window=0).tolerance == 0.0


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"tolerance": -0.1}, "greater than or equal to 0"),
        ({"tolerance": 0.6}, "less than or equal to 0.5"),
        ({"scale_down_window": -1}, "greater than or equal to 0"),
        ({"scale_down_window": 3601}, "less than or equal to 3600"),
    ],
)
def test_new_settings_refuse_out_of_range_values(values: dict[str, float], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        AutoscaleSpec.model_validate(values)


@pytest.mark.parametrize("seed", range(5))
def test_steady_load_at_twice_the_target_settles_and_stays(seed: int) -> None:
    # 8 calls in flight against target 4: two instances carry it at the target
    load = jittery(lambda _: 2 * SPEC.target, seed)
    run = simulate(SPEC, 1, load)
    late = run.changes_from(60)  # settled after a minute
    assert len(late) <= 1, [(t, d.reason) for t, d in late]
    assert all(d.direction == "up" for _, d in late)  # never back and forth
    assert set(run.counts[60:]) <= {2, 3}


@pytest.mark.parametrize("seed", range(3))
def test_a_load_inside_the_band_changes_nothing(seed: int) -> None:
    # 4 instances at 8 % over the target, ±3 % per second: inside the ±15 % band
    load = jittery(lambda _: 4 * SPEC.target * 1.08, seed, jitter=0.03)
    run = simulate(SPEC, 4, load, history=60)
    assert run.decisions == []
    assert set(run.counts) == {4}


@pytest.mark.parametrize("seed", range(3))
def test_a_real_step_up_still_scales_up_at_once_quoting_the_predicted_level(seed: int) -> None:
    step = 120
    load = jittery(lambda i: (2 if i < step else 4) * SPEC.target, seed)  # 8 → 16 in flight
    run = simulate(SPEC, 2, load, history=60)
    assert run.changes_from(0) == run.changes_from(step)  # steady before the step
    t, first = run.changes_from(step)[0]
    assert first.direction == "up" and t <= step + 2
    # within seconds, enough instances to bring 16 calls back to about 4 per instance
    assert run.counts[step - 60 + int(RECENT) + 2] >= 4
    # the reason and the inputs quote the figure the rule compared: the predicted level
    predicted = first.inputs["predicted"]
    assert first.inputs["compared"] == "predicted"
    assert predicted > first.inputs["threshold"] == pytest.approx(SPEC.target * 1.15)
    assert predicted >= first.inputs["level"]  # a rising trend only adds to it
    assert first.reason.startswith(f"in_flight {predicted:.3g}/instance"), first.reason
    assert "> target 4 ±15%: 2 → " in first.reason
    assert max(run.counts) <= 6


@pytest.mark.parametrize("seed", range(3))
def test_a_step_down_scales_down_only_after_the_window(seed: int) -> None:
    step = 120
    load = jittery(lambda i: (4 if i < step else 1) * SPEC.target, seed)  # 16 → 4 in flight
    run = simulate(SPEC, 4, load, history=60)
    assert run.changes_from(0) == run.changes_from(step)  # steady before the step
    t, first = run.changes_from(step)[0]
    assert first.direction == "down"
    assert step + SPEC.scale_down_window <= t <= step + SPEC.scale_down_window + 3
    assert first.inputs["compared"] == "peak" and first.inputs["held_seconds"] == 30.0
    assert f"at most {first.inputs['peak']:.3g}/instance, below 70% of target 4 for 30 s" in (
        first.reason
    )
    # then one at a time, one down cool-down apart, never below what the load needs
    assert all(d.direction == "down" for _, d in run.changes_from(step))
    assert run.counts[-1] == 2  # 4 calls x 1.15 at most: 2 instances keep each under 4


def test_a_scale_down_does_not_land_on_the_target_and_bounce_back() -> None:
    """Telemetry records each second's figure per instance with that second's count: a
    scale-down 3 → 2 under 8 steady calls against target 4 stepped the figure from 2.67
    to 4, exactly the target, and the step's slope, projected, crossed the band: 2 → 3,
    then down again (the real cluster changed its count every few seconds)."""
    spec = SPEC.model_copy(update={"window": 10.0, "scale_down_window": 10.0})
    current, last_up, last_down = 3, None, None
    recorded: list[tuple[float, float]] = []
    changes: list[ScaleDecision] = []
    for i in range(200):
        now = float(i)
        recorded.append((now, 8.0 / current))  # closed-loop clients: 8 calls, no jitter
        decision = decide(spec, current, recorded[-60:], last_up, last_down, now)
        if decision is not None:
            changes.append(decision)
            last_up, last_down = (now, last_down) if decision.direction == "up" else (last_up, now)
            current = decision.desired
    assert len(changes) <= 1, [d.reason for d in changes]

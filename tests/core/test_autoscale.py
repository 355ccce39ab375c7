"""Autoscaling as a pure function: bounds, cool-downs, prediction, hysteresis."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from aether.artifacts.build.detect import load_app_spec
from aether.core.autoscale import LOW_WATER, decide, slope
from aether.errors import BadRequestError
from aether.model.decisions import AutoscaleSpec

NOW = 1_000.0
SIM = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _flat(value: float, seconds: int = 40, now: float = NOW) -> list[tuple[float, float]]:
    return [(now - seconds + 1 + i, value) for i in range(seconds)]


def _spec(**kw: object) -> AutoscaleSpec:
    return AutoscaleSpec.model_validate(kw)


# -- the spec -----------------------------------------------------------------------------


def test_spec_defaults_and_target_per_metric() -> None:
    spec = AutoscaleSpec()
    assert (spec.min, spec.max, spec.metric) == (1, 10, "cpu")
    assert spec.scale_up_cooldown == 3.0 and spec.scale_down_cooldown == 30.0
    assert spec.window == 30.0 and spec.horizon == 10.0
    assert (spec.max_step_up, spec.max_step_down) == (4, 1)
    assert spec.target == 0.7
    assert _spec(metric="in_flight").target == 8.0
    assert _spec(metric="latency").target == 250.0
    assert _spec(metric="latency", target=100).target == 100.0


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"min": 5, "max": 2}, "min (5) must not be greater than max (2)"),
        ({"min": 0}, "greater than or equal to 1"),
        ({"target": -1}, "greater than or equal to 0"),
        ({"metric": "memory"}, "'cpu', 'in_flight' or 'latency'"),
        ({"window": 1}, "greater than or equal to 2"),
        ({"max_step_up": 0}, "greater than or equal to 1"),
        ({"cooldown": 3}, "Extra inputs are not permitted"),
    ],
)
def test_spec_refuses_nonsense_with_a_clear_message(
    values: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ValidationError) as info:
        AutoscaleSpec.model_validate(values)
    assert fragment in str(info.value)


def test_autoscale_table_in_aether_toml_reaches_the_app_spec(tmp_path: Path) -> None:
    (tmp_path / "aether.toml").write_text(
        'name = "web"\nstart = "python3 app.py"\n\n'
        '[autoscale]\nmin = 2\nmax = 8\nmetric = "in_flight"\ntarget = 1.5\nhorizon = 0\n'
    )
    spec = load_app_spec(tmp_path)
    assert spec.autoscale is not None
    assert (spec.autoscale.min, spec.autoscale.max, spec.autoscale.metric) == (2, 8, "in_flight")
    assert spec.autoscale.target == 1.5 and spec.autoscale.horizon == 0
    assert load_app_spec(tmp_path, name="other").autoscale == spec.autoscale

    (tmp_path / "aether.toml").write_text(
        'name = "web"\nstart = "x"\n[autoscale]\nmin = 9\nmax = 3\n'
    )
    with pytest.raises(BadRequestError) as info:
        load_app_spec(tmp_path)
    assert "autoscale" in info.value.message and "min (9)" in info.value.message


def test_no_autoscale_table_means_none(tmp_path: Path) -> None:
    (tmp_path / "aether.toml").write_text('name = "web"\nstart = "x"\n')
    assert load_app_spec(tmp_path).autoscale is None


# -- decide: tables -------------------------------------------------------------------------


def test_slope_is_the_least_squares_trend() -> None:
    assert slope([(0.0, 1.0), (1.0, 3.0), (2.0, 5.0), (3.0, 7.0)]) == pytest.approx(2.0)
    assert slope([(0.0, 4.0), (1.0, 4.0), (2.0, 4.0)]) == 0.0
    assert slope([(0.0, 1.0), (1.0, 9.0)]) == 0.0  # too few points to call it a trend


def test_below_min_or_above_max_is_fixed_at_once_even_inside_a_cool_down() -> None:
    spec = _spec(min=2, max=5)
    up = decide(spec, 0, [], last_up=NOW - 0.1, last_down=NOW - 0.1, now=NOW)
    assert up is not None and (up.desired, up.direction) == (2, "up")
    assert "below the autoscale min 2" in up.reason
    down = decide(spec, 9, [], last_up=NOW - 0.1, last_down=None, now=NOW)
    assert down is not None and (down.desired, down.direction) == (5, "down")
    assert "above the autoscale max 5: 9 → 5" in down.reason


def test_a_load_step_scales_up_with_a_readable_reason() -> None:
    spec = _spec(metric="in_flight", target=1.0, min=1, max=20, horizon=0)
    d = decide(spec, 2, _flat(3.9), None, None, NOW)
    assert d is not None
    assert (d.current, d.desired, d.direction) == (2, 6, "up")  # wanted 7, +4 at most
    assert d.reason.startswith("in_flight 3.9/instance > target 1 ±15%: 2 → 6")
    assert "at most 4 more per step" in d.reason
    # sized to the band: 7.8 calls over 7 instances is 1.11 each, inside it; over 6, 1.3
    assert d.inputs["wanted"] == 7 and d.inputs["predicted"] == pytest.approx(3.9)


def test_scale_up_is_capped_at_max() -> None:
    spec = _spec(metric="cpu", target=0.5, min=1, max=3, horizon=0)
    d = decide(spec, 2, _flat(2.0), None, None, NOW)
    assert d is not None and d.desired == 3 and "capped at max 3" in d.reason


def test_the_trend_predicts_load_before_it_arrives() -> None:
    ramp = [(NOW - 29 + i, 0.3 + 0.025 * i) for i in range(30)]  # 0.3 → 1.025, rising
    level = sum(v for _, v in ramp[-6:]) / 6
    assert level < 1.0  # not over the target yet
    spec = _spec(metric="in_flight", target=1.0, horizon=10)
    d = decide(spec, 4, ramp, None, None, NOW)
    assert d is not None and d.direction == "up" and d.desired > 4
    # the reason quotes the predicted level the rule compared, not the current one
    assert d.reason.startswith(
        f"in_flight {d.inputs['predicted']:.3g}/instance predicted "
        f"({level:.3g} now + trend +0.025/s over 10 s) > target 1 ±15%: 4 → "
    ), d.reason
    assert d.inputs["compared"] == "predicted" and d.inputs["threshold"] == pytest.approx(1.15)
    assert d.inputs["predicted"] > 1.15 > d.inputs["level"]
    assert decide(spec.model_copy(update={"horizon": 0.0}), 4, ramp, None, None, NOW) is None


def test_a_falling_trend_does_not_scale_down_by_prediction() -> None:
    falling = [(NOW - 29 + i, 3.0 - 0.09 * i) for i in range(30)]  # ends near 0.4
    spec = _spec(metric="in_flight", target=1.0, horizon=10, scale_down_cooldown=30)
    assert decide(spec, 4, falling, None, None, NOW) is None  # the 30 s mean is not low


@pytest.mark.parametrize(
    ("series", "why"),
    [
        ([], "no telemetry"),
        (_flat(5.0, now=NOW - 10), "stale telemetry"),
    ],
)
def test_missing_or_stale_telemetry_changes_nothing(
    series: list[tuple[float, float]], why: str
) -> None:
    spec = _spec(metric="in_flight", target=1.0, min=1, max=10)
    assert decide(spec, 3, series, None, None, NOW) is None, why
    idle = [(t, 0.0) for t, _ in series]
    assert decide(spec, 3, idle, None, None, NOW) is None, why


def test_up_cool_down_counts_from_any_change() -> None:
    spec = _spec(metric="in_flight", target=1.0, scale_up_cooldown=3)
    assert decide(spec, 2, _flat(3.0), last_up=NOW - 1, last_down=None, now=NOW) is None
    assert decide(spec, 2, _flat(3.0), last_up=None, last_down=NOW - 2, now=NOW) is None
    assert decide(spec, 2, _flat(3.0), last_up=NOW - 3, last_down=None, now=NOW) is not None


def test_idle_scales_down_one_at_a_time_after_the_down_cool_down() -> None:
    spec = _spec(metric="in_flight", target=1.0, min=1, max=10, scale_down_cooldown=30)
    d = decide(spec, 5, _flat(0.0), None, None, NOW)
    assert d is not None and (d.desired, d.direction) == (4, "down")
    assert "below 70% of target 1 for 30 s: 5 → 4" in d.reason
    # inside the down cool-down of the last change (up or down): stay
    assert decide(spec, 5, _flat(0.0), last_up=NOW - 20, last_down=None, now=NOW) is None
    assert decide(spec, 5, _flat(0.0), last_up=None, last_down=NOW - 29, now=NOW) is None
    # at min: stay
    assert decide(spec, 1, _flat(0.0), None, None, NOW) is None


def test_scale_down_needs_the_whole_cool_down_covered() -> None:
    spec = _spec(metric="in_flight", target=1.0, scale_down_cooldown=30)
    assert decide(spec, 5, _flat(0.0, seconds=10), None, None, NOW) is None  # only 10 s known
    gappy = [(t, v) for t, v in _flat(0.0) if int(t) % 3]  # a third of the seconds missing
    assert decide(spec, 5, gappy, None, None, NOW) is None


def test_scale_down_has_hysteresis() -> None:
    spec = _spec(metric="in_flight", target=1.0, scale_down_cooldown=30, max_step_down=10)
    assert decide(spec, 4, _flat(0.75), None, None, NOW) is None  # below target, above 70%
    d = decide(spec, 10, _flat(0.2), None, None, NOW)
    # 10 x 0.2 = 2 calls: sized to the band's lower edge (0.85 per instance), 3 carry it
    assert d is not None and d.desired == 3
    assert 10 * 0.2 / d.desired <= 1.0  # never scales down into an overload


def test_latency_waits_for_the_last_scale_up_to_serve() -> None:
    spec = _spec(metric="latency", target=100.0, horizon=0)
    assert decide(spec, 4, _flat(400.0), None, None, NOW, reporting=2) is None
    d = decide(spec, 4, _flat(400.0), None, None, NOW, reporting=4)
    assert d is not None and d.desired == 8
    assert "latency 400 ms/instance > target 100 ms" in d.reason


# -- decide: properties ---------------------------------------------------------------------


@st.composite
def specs(draw: st.DrawFn) -> AutoscaleSpec:
    low = draw(st.integers(1, 5))
    return AutoscaleSpec(
        min=low,
        max=draw(st.integers(low, 20)),
        metric=draw(st.sampled_from(["cpu", "in_flight", "latency"])),
        target=draw(st.floats(0.5, 10.0)),
        scale_up_cooldown=draw(st.floats(0.0, 20.0)),
        scale_down_cooldown=draw(st.floats(0.0, 60.0)),
        window=draw(st.floats(2.0, 60.0)),
        horizon=draw(st.floats(0.0, 30.0)),
        max_step_up=draw(st.integers(1, 6)),
        max_step_down=draw(st.integers(1, 6)),
        tolerance=draw(st.floats(0.0, 0.5)),
        scale_down_window=draw(st.floats(0.0, 60.0)),
    )


@dataclass
class Change:
    t: float
    before: int
    after: int


def _simulate(
    spec: AutoscaleSpec, start: int, load: list[float], *, seconds: int | None = None
) -> tuple[list[int], list[Change]]:
    """One decide per second; ``load`` is the total load (cycled), spread over the instances."""
    current, last_up, last_down = start, None, None
    history: list[tuple[float, float]] = []  # (t, total load)
    counts: list[int] = []
    changes: list[Change] = []
    for i in range(seconds or len(load)):
        now = float(i)
        history.append((now, load[i % len(load)]))
        series = [(t, total / max(current, 1)) for t, total in history[-200:]]
        d = decide(spec, current, series, last_up, last_down, now)
        if d is not None:
            assert d.current == current and d.desired != current
            changes.append(Change(now, current, d.desired))
            if d.direction == "up":
                last_up = now
            else:
                last_down = now
            current = d.desired
        counts.append(current)
    return counts, changes


@SIM
@given(
    spec=specs(),
    data=st.data(),
    load=st.lists(st.floats(0.0, 200.0), min_size=1, max_size=40),
)
def test_never_outside_bounds_and_never_two_changes_inside_a_cool_down(
    spec: AutoscaleSpec, data: st.DataObject, load: list[float]
) -> None:
    start = data.draw(st.integers(spec.min, spec.max))
    counts, changes = _simulate(spec, start, load, seconds=150)
    assert all(spec.min <= c <= spec.max for c in counts)
    for previous, change in itertools.pairwise(changes):
        gap = change.t - previous.t
        if change.after > change.before:
            assert gap >= spec.scale_up_cooldown, (previous, change)
        else:
            assert gap >= spec.scale_down_cooldown, (previous, change)
    for change in changes:
        step = change.after - change.before
        assert -spec.max_step_down <= step <= spec.max_step_up


@SIM
@given(spec=specs(), factor=st.floats(2.0, 50.0))
def test_a_load_step_raises_the_count_within_seconds(spec: AutoscaleSpec, factor: float) -> None:
    spec = spec.model_copy(update={"max": max(spec.max, spec.min + 1), "scale_up_cooldown": 3.0})
    if spec.metric == "latency":  # latency does not add up over instances: model it as per call
        spec = spec.model_copy(update={"metric": "in_flight"})
    idle = [0.0] * 60
    step = [factor * spec.target * spec.min] * 60
    counts, changes = _simulate(spec, spec.min, idle + step)
    assert counts[59] == spec.min  # idle at min: nothing moved
    first_up = next(c for c in changes if c.after > c.before)
    assert 60 <= first_up.t <= 60 + 6  # within the recent window after the step


@SIM
@given(spec=specs())
def test_idleness_lowers_to_min_over_time(spec: AutoscaleSpec) -> None:
    per_step = max(spec.scale_down_cooldown, 5.0) + 3.0
    seconds = int((spec.max - spec.min + 1) * per_step + spec.window + spec.scale_down_window + 10)
    counts, changes = _simulate(spec, spec.max, [0.0], seconds=seconds)
    assert counts[-1] == spec.min
    assert all(c.after < c.before for c in changes)  # idle never scales up


def test_low_water_is_below_the_target() -> None:
    assert 0 < LOW_WATER < 1

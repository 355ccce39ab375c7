"""Autoscaling by a slice's entry point: the same rules, on that entry point's figures."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from aether.core.autoscale import decide, entry_value
from aether.core.controller import AppState, ControllerSnapshot, evaluate
from aether.model.decisions import AutoscaleSpec
from aether.model.telemetry import EntrySample

NOW = 1_000.0


def _flat(value: float, seconds: int = 40) -> list[tuple[float, float]]:
    return [(NOW - seconds + 1 + i, value) for i in range(seconds)]


def _spec(**kw: object) -> AutoscaleSpec:
    return AutoscaleSpec.model_validate({"entry": "charge", **kw})


def _entry(in_flight: int = 0, mean_ms: float = 0.0, instances: int = 2) -> EntrySample:
    return EntrySample(
        slice="billing",
        entry="charge",
        instances=instances,
        calls_per_s=10.0,
        errors_per_s=0.0,
        mean_ms=mean_ms,
        in_flight=in_flight,
        in_flight_per_instance=in_flight / instances if instances else float(in_flight),
    )


def test_an_entry_spec_scales_by_in_flight_unless_told_latency_and_never_cpu() -> None:
    spec = _spec()
    assert (spec.entry, spec.metric, spec.target) == ("charge", "in_flight", 8.0)
    latency = _spec(metric="latency_ms", target=40)
    assert (latency.metric, latency.target) == ("latency", 40.0)
    assert AutoscaleSpec.model_validate({"metric": "latency_ms"}).metric == "latency"
    with pytest.raises(ValidationError) as info:
        _spec(metric="cpu")
    assert "in_flight or latency_ms" in str(info.value)
    assert AutoscaleSpec().entry is None  # an app's spec is as it was


def test_the_entry_figure_is_open_calls_per_desired_instance_or_the_mean_duration() -> None:
    assert entry_value(_spec(), _entry(in_flight=30), desired=3) == 10.0
    assert entry_value(_spec(), _entry(in_flight=5), desired=0) == 5.0
    assert entry_value(_spec(metric="latency_ms"), _entry(mean_ms=12.5), desired=3) == 12.5


def test_above_the_target_it_scales_up_and_the_reason_names_the_entry() -> None:
    spec = _spec(target=4, horizon=0, max=10)
    up = decide(spec, 2, _flat(8.0), None, None, NOW)
    assert up is not None and (up.direction, up.current, up.desired) == ("up", 2, 4)
    assert up.reason.startswith("entry charge in_flight 8/instance > target 4")
    assert up.inputs["entry"] == "charge" and up.inputs["metric"] == "in_flight"

    latency = _spec(metric="latency_ms", target=50, horizon=0)
    slow = decide(latency, 2, _flat(120.0), None, None, NOW, reporting=2)
    assert slow is not None and slow.direction == "up"
    assert "entry charge latency 120 ms/instance > target 50 ms" in slow.reason
    # latency does not fall before the new instances serve: no second step up meanwhile
    assert decide(latency, 4, _flat(120.0), None, None, NOW, reporting=2) is None


def test_below_the_target_it_scales_down_after_the_calm_window() -> None:
    spec = _spec(target=8, scale_down_cooldown=10, scale_down_window=10, window=30)
    down = decide(spec, 4, _flat(1.0), None, None, NOW)
    assert down is not None and (down.direction, down.desired) == ("down", 3)
    assert down.reason.startswith("entry charge in_flight at most 1/instance, below 70%")
    # within the band: stay
    assert decide(spec, 4, _flat(8.0), None, None, NOW) is None


def test_bounds_and_cooldowns_hold_for_entries_too() -> None:
    spec = _spec(target=4, horizon=0, min=2, max=3)
    assert decide(spec, 1, [], None, None, NOW).desired == 2  # type: ignore[union-attr]
    assert decide(spec, 5, [], None, None, NOW).desired == 3  # type: ignore[union-attr]
    capped = decide(spec, 2, _flat(40.0), None, None, NOW)
    assert capped is not None and capped.desired == 3 and "capped at max 3" in capped.reason
    assert decide(spec, 2, _flat(40.0), NOW - 1.0, None, NOW) is None  # up cool-down
    calm = _spec(target=8, min=1, scale_down_cooldown=30, scale_down_window=10)
    assert decide(calm, 3, _flat(0.5), None, NOW - 5.0, NOW) is None  # down cool-down
    assert decide(spec, 2, [(NOW - 20, 40.0)], None, None, NOW) is None  # stale figures


def test_the_controller_tree_decides_an_entry_scale_like_an_app_scale() -> None:
    app = AppState(
        app="billing",
        instances=2,
        autoscale=_spec(target=4, horizon=0),
        series=tuple(_flat(12.0)),
        tenant="default",
    )
    [decision] = evaluate(ControllerSnapshot(now=NOW, apps=[app]))
    assert (decision.kind, decision.target) == ("scale", "billing")
    assert decision.action == {"instances": 6, "from": 2, "direction": "up"}
    assert "entry charge" in decision.reason and decision.inputs["entry"] == "charge"

"""Autoscaling as a pure function: how many instances should an app run now?

``decide`` looks at one metric per instance over a sliding window (one
``(ts, value)`` per second, oldest first) and answers with a
:class:`ScaleDecision` or ``None`` (stay). The rules, in order:

1. **Bounds** - an app below ``min`` or above ``max`` is brought into bounds at
   once, cool-downs or not.
2. **Freshness** - no sample in the last ``STALE_AFTER`` seconds: nothing is
   known, nothing changes.
3. **Up** - ``predicted`` = the mean of the last ``RECENT`` seconds plus the
   rising part of the trend (least-squares slope over the window) times
   ``horizon`` (at most as far ahead as the samples reach back). Above the
   tolerance band (``predicted > target * (1 + tolerance)``) and past the up
   cool-down since the last change: the fewest instances that bring the
   predicted level back inside the band,
   ``desired = ceil(current * predicted / (target * (1 + tolerance)))``, at most
   ``max_step_up`` more, at most ``max``. Inside the band nothing changes: noise
   around the target is not a reason to scale, and sizing to the band (not to
   the target itself) keeps a load at an exact multiple of the target from
   being rounded up to one instance too many by its own jitter.
4. **Down** - stabilised, with hysteresis: only when every second of the last
   ``max(scale_down_window, scale_down_cooldown)`` seconds (which samples must
   cover) and the recent mean are below ``min(LOW_WATER, 1 - tolerance) *
   target``, and the last change is at least ``scale_down_cooldown`` old. Then
   down to the highest count any second of that span asked for,
   ``desired = ceil(current * peak / target)`` (the busiest second still fits),
   at most ``max_step_down`` fewer, at least ``min``.

Reasons quote the figure the rule compared (the predicted level going up, the
busiest second of the span going down); ``inputs`` carry it with the
threshold it crossed.

With ``spec.entry`` (a slice's entry point) the series is that entry point's
figure (:func:`entry_value`: its open calls per instance, or its mean call
duration), decided by the same rules; reasons and inputs name the entry.

No I/O and no clock: the caller passes ``now``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aether.model.decisions import AutoscaleSpec
from aether.model.telemetry import EntrySample

__all__ = [
    "LOW_WATER",
    "RECENT",
    "STALE_AFTER",
    "ScaleDecision",
    "decide",
    "entry_value",
    "slope",
]

RECENT = 5.0  # seconds averaged for "the current level"
STALE_AFTER = 3.0  # seconds without a sample after which the figures are not trusted
LOW_WATER = 0.7  # scale down only below this fraction of the target
_UNITS = {"cpu": " cores", "in_flight": "", "latency": " ms"}


@dataclass(frozen=True)
class ScaleDecision:
    current: int
    desired: int
    direction: Literal["up", "down"]
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of value over time (units per second); 0 with < 3 points."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var <= 0.0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var


def entry_value(spec: AutoscaleSpec, sample: EntrySample, desired: int) -> float:
    """An entry point's figure per instance of ``desired`` instances in one second: its
    open calls spread over the blueprint's count (like an app's), or its mean call
    duration as measured."""
    if spec.metric == "latency":
        return sample.mean_ms
    return sample.in_flight / max(desired, 1)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def decide(
    spec: AutoscaleSpec,
    current_instances: int,
    series: Sequence[tuple[float, float]],
    last_up: float | None,
    last_down: float | None,
    now: float,
    *,
    reporting: int | None = None,
) -> ScaleDecision | None:
    """The instance count to move to, or None to stay (see the module docstring).

    ``series`` holds the metric per instance, relative to ``current_instances``;
    ``last_up``/``last_down`` are when this app was last scaled up/down.
    ``reporting`` is how many instances report figures now: latency does not
    fall until new instances serve, so it never scales up again before they do.
    """
    current = current_instances
    bounds = {"min": spec.min, "max": spec.max}
    if current < spec.min:
        return ScaleDecision(
            current,
            spec.min,
            "up",
            f"{current} instance(s) is below the autoscale min {spec.min}: {current} → {spec.min}",
            {"instances": current, **bounds},
        )
    if current > spec.max:
        return ScaleDecision(
            current,
            spec.max,
            "down",
            f"{current} instance(s) is above the autoscale max {spec.max}: {current} → {spec.max}",
            {"instances": current, **bounds},
        )

    window = [(t, v) for t, v in series if now - spec.window <= t <= now]
    if not window or now - window[-1][0] > STALE_AFTER:
        return None  # missing or stale telemetry: never act on what is not known

    metric, target, unit = spec.metric, spec.target, _UNITS[spec.metric]
    what = metric if spec.entry is None else f"entry {spec.entry} {metric}"
    recent = [v for t, v in window if t >= now - min(RECENT, spec.window)]
    level = _mean(recent)
    trend = slope(window)
    # never look further ahead than the samples reach back: a slope over a few seconds is noise
    horizon = min(spec.horizon, window[-1][0] - window[0][0])
    rising = max(trend, 0.0) * horizon
    predicted = level + rising
    upper = target * (1.0 + spec.tolerance)
    last_change = max((t for t in (last_up, last_down) if t is not None), default=None)
    inputs: dict[str, Any] = {
        "metric": metric,
        "target": target,
        "tolerance": spec.tolerance,
        "level": round(level, 4),
        "trend_per_s": round(trend, 4),
        "predicted": round(predicted, 4),
        "ratio": round(predicted / target, 4) if target > 0 else None,
        "horizon": round(horizon, 4),
        "samples": len(window),
        "instances": current,
        **bounds,
    }
    if spec.entry is not None:
        inputs["entry"] = spec.entry
    band = f"target {_fmt(target)}{unit} ±{_fmt(spec.tolerance * 100)}%"

    if predicted > upper and current < spec.max:
        if last_change is not None and now - last_change < spec.scale_up_cooldown:
            return None
        if metric == "latency" and reporting is not None and reporting < current:
            return None  # the last scale-up is not serving yet
        base = max(current, 1)
        wanted = math.ceil(base * predicted / upper - 1e-9)
        desired = min(wanted, current + spec.max_step_up, spec.max)
        if desired <= current:
            return None
        figure = f"{what} {_fmt(predicted)}{unit}/instance"
        if rising > 0:
            figure += (
                f" predicted ({_fmt(level)}{unit} now + trend {trend:+.2g}{unit}/s"
                f" over {_fmt(horizon)} s)"
            )
        capped = ""
        if desired < wanted:
            capped = (
                f", capped at max {spec.max}"
                if desired == spec.max
                else f", at most {spec.max_step_up} more per step"
            )
        return ScaleDecision(
            current,
            desired,
            "up",
            f"{figure} > {band}: {current} → {desired}{capped}",
            {**inputs, "compared": "predicted", "threshold": round(upper, 4), "wanted": wanted},
        )

    if current <= spec.min:
        return None
    low_water = min(LOW_WATER, 1.0 - spec.tolerance)
    low = low_water * target
    if level >= low:
        return None
    if last_change is not None and now - last_change < spec.scale_down_cooldown:
        return None
    span = max(spec.scale_down_cooldown, spec.scale_down_window, min(RECENT, spec.window))
    held = [(t, v) for t, v in series if now - span <= t <= now]
    # covered: samples reach back to the start of the span and hardly any second is missing
    if not held or held[0][0] > now - span + 2.0 or len(held) < 0.8 * span:
        return None
    peak = max(v for _, v in held)
    if peak >= low:
        return None
    # sized so the busiest second sits below the band's lower edge (hysteresis)
    needed = math.ceil(current * peak / (target * (1.0 - spec.tolerance)) - 1e-9)
    desired = max(needed, current - spec.max_step_down, spec.min)
    if desired >= current:
        return None
    return ScaleDecision(
        current,
        desired,
        "down",
        f"{what} at most {_fmt(peak)}{unit}/instance, below {_fmt(low_water * 100)}% of "
        f"target {_fmt(target)}{unit} for {_fmt(span)} s: {current} → {desired}",
        {
            **inputs,
            "compared": "peak",
            "peak": round(peak, 4),
            "ratio": round(peak / target, 4) if target > 0 else None,
            "threshold": round(low, 4),
            "held_seconds": span,
        },
    )

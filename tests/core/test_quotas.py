"""The pure quota check: limits, use and request → None or the refusal naming the quota."""

from __future__ import annotations

from aether.core.quotas import Refusal, check, effective
from aether.model.limits import TenantLimits, Usage


def test_within_the_limit_passes_and_past_it_is_refused_with_the_numbers() -> None:
    limits = TenantLimits(instances=10, cpu=2.0)
    used = Usage(instances=8, cpu=1.5)
    assert check(limits, used, {"instances": 2, "cpu": 0.5}) is None
    refusal = check(limits, used, {"instances": 4})
    assert refusal == Refusal(quota="instances", limit=10, used=8, requested=4)
    assert refusal.message == "quota 'instances' exceeded: limit 10, in use 8, asked 4"
    assert check(limits, used, {"cpu": 0.75}) == Refusal("cpu", 2.0, 1.5, 0.75)


def test_unlimited_quotas_and_decreases_always_pass() -> None:
    used = Usage(instances=100, memory_mb=1 << 20)
    assert check(TenantLimits(), used, {"instances": 1000, "memory_mb": 1 << 30}) is None
    # already over (a limit lowered later): giving back never fails, asking more does
    assert check(TenantLimits(instances=10), used, {"instances": -5}) is None
    assert check(TenantLimits(instances=10), used, {"instances": 1}) is not None


def test_a_tenants_own_values_win_over_the_defaults() -> None:
    defaults = TenantLimits(rate_per_minute=1000, burst=200, tasks=50)
    merged = effective(TenantLimits(rate_per_minute=100, instances=3), defaults)
    assert (merged.rate_per_minute, merged.burst) == (100, 100)  # a burst within the rate
    assert (merged.instances, merged.tasks, merged.cpu) == (3, 50, None)

"""Quota checks: the limits, what a tenant uses and what it asks → None or the refusal.

Pure: the caller reads the use (``server/services/quotas.py``) and raises the refusal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aether.model.limits import QUOTAS, TenantLimits, Usage

__all__ = ["Refusal", "check", "effective"]


@dataclass(frozen=True)
class Refusal:
    quota: str
    limit: float
    used: float
    requested: float

    @property
    def message(self) -> str:
        return (
            f"quota {self.quota!r} exceeded: limit {_num(self.limit)}, "
            f"in use {_num(self.used)}, asked {_num(self.requested)}"
        )

    def details(self) -> dict[str, object]:
        return {
            "quota": self.quota,
            "limit": self.limit,
            "used": self.used,
            "requested": self.requested,
        }


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def effective(configured: TenantLimits, defaults: TenantLimits) -> TenantLimits:
    """Each value the tenant's own, else the cluster default (None: unlimited); a burst
    is at most the rate (a tenant's own lower rate cuts the default burst)."""
    merged = {**defaults.model_dump(exclude_none=True), **configured.model_dump(exclude_none=True)}
    if "rate_per_minute" in merged and "burst" in merged:
        merged["burst"] = min(merged["burst"], merged["rate_per_minute"])
    return TenantLimits.model_validate(merged)


def check(limits: TenantLimits, used: Usage, requested: Mapping[str, float]) -> Refusal | None:
    """The first quota that ``requested`` (quota → amount added) would take past its
    limit. Asking for nothing (or less) never fails, so a scale-down always passes."""
    for quota in QUOTAS:
        asked = requested.get(quota, 0)
        limit = getattr(limits, quota)
        if limit is None or asked <= 0:
            continue
        in_use = getattr(used, quota)
        if in_use + asked > limit:
            return Refusal(quota=quota, limit=limit, used=in_use, requested=asked)
    return None

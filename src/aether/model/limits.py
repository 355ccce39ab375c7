"""A tenant's rate limit and quotas, and what it uses (``/api/v1/tenants/{t}/limits``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["QUOTAS", "LimitsOut", "TenantLimits", "Usage"]

#: The quotas, in the order they are checked and shown.
QUOTAS = ("instances", "cpu", "memory_mb", "tasks", "sandboxes", "artifact_bytes")

_Count = Annotated[int, Field(ge=0, le=1 << 62)]


class TenantLimits(BaseModel):
    """Per-tenant values; None: the cluster default (``AETHER_RATE_LIMIT_*``,
    ``AETHER_QUOTA_*``; a quota without a default is unlimited)."""

    model_config = ConfigDict(extra="forbid")

    rate_per_minute: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    burst: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    instances: _Count | None = None  # desired instances over all the tenant's apps
    cpu: Annotated[float, Field(ge=0, le=1 << 40)] | None = None  # cores reserved
    memory_mb: _Count | None = None  # MiB reserved
    tasks: _Count | None = None  # queued and running
    sandboxes: _Count | None = None  # not deleted
    artifact_bytes: _Count | None = None  # artifacts stored

    @model_validator(mode="after")
    def _burst_within_rate(self) -> TenantLimits:
        if self.rate_per_minute and self.burst and self.burst > self.rate_per_minute:
            raise ValueError(
                f"burst {self.burst} exceeds rate_per_minute {self.rate_per_minute}: "
                "a burst is at most one minute's requests"
            )
        return self


class Usage(BaseModel):
    """What a tenant uses now, per quota."""

    instances: int = 0
    cpu: float = 0.0
    memory_mb: int = 0
    tasks: int = 0
    sandboxes: int = 0
    artifact_bytes: int = 0


class LimitsOut(BaseModel):
    tenant: str
    configured: TenantLimits  # what is set for this tenant (None: the cluster default)
    effective: TenantLimits  # what applies (None: unlimited)
    usage: Usage

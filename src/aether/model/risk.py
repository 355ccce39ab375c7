"""Signals about nodes and the risk assessments computed from them."""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

__all__ = ["RiskAssessment", "RiskStatus", "SignalIn", "SignalKind", "SignalOut"]

# ``clear`` drops the node's earlier signals of the same source from risk evaluation
# (``aether drill stop`` records one with source "drill"); its value is ignored.
SignalKind = Literal["spot_price", "rebalance", "capacity", "clear"]


class RiskStatus(enum.StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {RiskStatus.LOW: 0, RiskStatus.MEDIUM: 1, RiskStatus.HIGH: 2, RiskStatus.CRITICAL: 3}


class SignalIn(BaseModel):
    """One external input about a node: a spot price, a rebalance notice, a capacity score."""

    node: str = Field(min_length=1, max_length=128)
    kind: SignalKind
    value: float = Field(default=0.0, allow_inf_nan=False)
    # spot_price: the price (> 0); rebalance: 1.0 a notice, 0.0 withdrawn; capacity: 0..1
    source: str = Field(default="api", min_length=1, max_length=64)  # "drill" for fire drills
    ts: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    # when it was observed (seconds since the epoch); the server's clock when absent

    @model_validator(mode="after")
    def _value_fits_kind(self) -> SignalIn:
        if self.kind == "spot_price" and self.value <= 0:
            raise ValueError(f"a spot price must be positive, got {self.value}")
        if self.kind in ("rebalance", "capacity") and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"a {self.kind} value must be within 0..1, got {self.value}")
        return self


class SignalOut(SignalIn):
    id: int
    ts: float


class RiskAssessment(BaseModel):
    """The risk engine's verdict on one node at one moment, with its evidence."""

    node: str
    status: RiskStatus
    confidence: float = Field(ge=0.0, le=1.0)
    root_cause: str  # "Cloud Provider Signal", "Price Spike Detected", "Stable", ...
    rule: str  # the rule that decided it, e.g. "market.rebalance"
    inputs: dict[str, Any] = Field(default_factory=dict)  # the figures the rule saw
    ts: float

"""Signals about nodes and the risk assessments computed from them."""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = ["RiskAssessment", "RiskStatus", "SignalIn", "SignalKind", "SignalOut"]

SignalKind = Literal["spot_price", "rebalance", "capacity"]


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
    value: float = 0.0  # price, 1.0 for a rebalance notice, capacity score 0..1
    source: str = Field(default="api", max_length=64)  # "drill" for fire-drill signals
    ts: float | None = None  # when it was observed; the server's clock when absent


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

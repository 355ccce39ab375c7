"""The controller's vocabulary: autoscaling specs, decisions, adviser proposals.

A :class:`Decision` is what one layer of the controller wants done (scale an
app, drain or undrain a node), with the figures it looked at and a reason a
person can read. Every applied decision and every adviser proposal is kept in
the records database as a :class:`DecisionOut` with its outcome.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DEFAULT_TARGETS",
    "AutoscaleSpec",
    "Decision",
    "DecisionKind",
    "DecisionOut",
    "Metric",
    "Outcome",
    "Proposal",
]

Metric = Literal["cpu", "in_flight", "latency"]
# advice: an adviser call itself; rebalance: one instance moved to even out an app's spread
# agent: a deployed agent's replica placed, moved or removed (leader/agents.py)
DecisionKind = Literal["scale", "drain", "undrain", "advice", "rebalance", "agent"]
Outcome = Literal["applied", "refused", "failed"]

# What "busy enough for one more instance" means when aether.toml gives no target:
# cores per instance, open calls per instance, mean call duration in ms.
DEFAULT_TARGETS: dict[str, float] = {"cpu": 0.7, "in_flight": 8.0, "latency": 250.0}


class AutoscaleSpec(BaseModel):
    """``[autoscale]`` in aether.toml: keep the app's instances within ``[min, max]``.

    ``metric`` is what one instance should carry at most: ``cpu`` (cores per
    instance), ``in_flight`` (open calls per instance) or ``latency`` (mean call
    duration in ms); ``target`` the level to hold it at, give or take
    ``tolerance`` (a fraction of it); ``scale_down_window`` the seconds of calm
    a scale-down looks back over (stabilisation).

    ``entry`` (a slice's): scale by that entry point's figures instead of the
    app's -- ``in_flight`` (its open calls per instance; the default metric with
    an entry) or ``latency`` (its mean call duration in ms; ``latency_ms`` is
    accepted as the same); ``cpu`` is an instance's, not an entry point's.
    """

    model_config = ConfigDict(extra="forbid")

    min: int = Field(default=1, ge=1, le=1000)  # >= 1: demand is only seen through instances
    max: int = Field(default=10, ge=1, le=1000)
    metric: Metric = "cpu"
    entry: str | None = Field(default=None, min_length=1, max_length=100)
    target: float = Field(default=0.0, ge=0.0)  # 0 (or absent): DEFAULT_TARGETS[metric]
    scale_up_cooldown: float = Field(default=3.0, ge=0.0, le=3600.0)
    scale_down_cooldown: float = Field(default=30.0, ge=0.0, le=3600.0)
    window: float = Field(default=30.0, ge=2.0, le=7200.0)  # seconds of history looked at
    horizon: float = Field(default=10.0, ge=0.0, le=600.0)  # predictive look-ahead; 0 = off
    max_step_up: int = Field(default=4, ge=1, le=1000)  # instances added per decision
    max_step_down: int = Field(default=1, ge=1, le=1000)  # instances removed per decision
    # no change while predicted/target is within 1 ± tolerance (Kubernetes' HPA: 0.1; wider
    # here: per-second figures of a few instances are noisier than HPA's averages)
    tolerance: float = Field(default=0.15, ge=0.0, le=0.5)
    # scale down only to the highest count any second of this window asked for (HPA: 300 s)
    scale_down_window: float = Field(default=30.0, ge=0.0, le=3600.0)

    @field_validator("metric", mode="before")
    @classmethod
    def _latency_ms(cls, value: object) -> object:
        return "latency" if value == "latency_ms" else value

    @model_validator(mode="after")
    def _check(self) -> AutoscaleSpec:
        if self.entry is not None:
            if "metric" not in self.model_fields_set:
                self.metric = "in_flight"
            elif self.metric == "cpu":
                raise ValueError(
                    f"entry {self.entry!r}: an entry point scales by in_flight or latency_ms, "
                    'not cpu; set metric = "in_flight" or "latency_ms" in [autoscale]'
                )
        if self.min > self.max:
            raise ValueError(
                f"min ({self.min}) must not be greater than max ({self.max}); "
                "set min <= max in [autoscale]"
            )
        if self.target == 0.0:
            self.target = DEFAULT_TARGETS[self.metric]
        return self


class Decision(BaseModel):
    """What one layer wants done, before it is applied and recorded."""

    layer: int = Field(ge=1, le=3)
    kind: DecisionKind
    target: str  # app name (scale, rebalance) or node id (drain, undrain)
    action: dict[str, Any] = Field(default_factory=dict)  # e.g. {"instances": 4, "from": 2}
    inputs: dict[str, Any] = Field(default_factory=dict)  # the figures the rule saw
    reason: str
    refusal: str = ""  # set when a safety rule holds the decision back (recorded as refused)
    tenant: str | None = None  # the app's tenant; None for node decisions


class DecisionOut(BaseModel):
    """One row of the decisions record, as the API returns it."""

    id: int
    ts: float
    layer: int
    kind: str
    target: str
    action: dict[str, Any]
    inputs: dict[str, Any]
    reason: str
    outcome: str
    detail: str


class Proposal(BaseModel):
    """One entry of an adviser's ``{"proposals": [...]}``, taken as sent.

    Fields are loosely typed on purpose: the guardrails, not the parser, judge
    whether ``instances`` is a sensible integer and ``target`` a real app or node.
    """

    model_config = ConfigDict(extra="ignore")

    kind: Any = None
    target: Any = None
    instances: Any = None
    reason: Any = ""

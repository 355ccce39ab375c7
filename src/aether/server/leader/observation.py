"""What the controller and the advisers decide from, and what an adviser may ask of the
controller: the narrow interface between those two loops (neither imports the other)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aether.core.controller import ControllerSnapshot
from aether.core.guardrails import Verdict
from aether.model.decisions import Decision, DecisionOut, Proposal
from aether.model.risk import RiskAssessment
from aether.model.telemetry import ClusterSample
from aether.server.services.cluster import ClusterSnapshot
from aether.server.settings import ServerSettings
from aether.store.election import Leadership

__all__ = ["Decider", "Observation"]


@dataclass
class Observation:
    """One look at the cluster: what both layer 1 and the advisers decide from."""

    now: float
    cluster: ClusterSnapshot
    samples: list[ClusterSample]
    assessments: dict[str, RiskAssessment]
    snapshot: ControllerSnapshot
    last_change: dict[str, float] = field(default_factory=dict)

    @property
    def latest(self) -> ClusterSample | None:
        return self.samples[-1] if self.samples else None


class Decider(Protocol):
    """The controller as an adviser sees it: observe, then pass proposals through the
    guardrails (``consider``), recording each outcome."""

    @property
    def settings(self) -> ServerSettings: ...

    async def observe(self, now: float | None = None) -> Observation: ...

    async def consider(
        self,
        layer: int,
        proposals: Sequence[Proposal],
        leadership: Leadership,
        *,
        inputs: dict[str, object] | None = None,
        now: float | None = None,
    ) -> list[tuple[Verdict, DecisionOut | None]]: ...

    async def record_once(
        self, key: tuple[int, str, str], decision: Decision, outcome: str, detail: str, now: float
    ) -> DecisionOut | None: ...

    def forget(self, key: tuple[int, str, str]) -> None: ...

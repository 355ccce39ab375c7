"""Bodies of ``POST /api/v1/rebalance``, shared by server, CLI and tests."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from aether.model.migrations import MigrationOut

__all__ = ["MoveOut", "RebalanceIn", "RebalanceOut", "RefusalOut"]


class RebalanceIn(BaseModel):
    """Spread ``app``'s instances (None: every app of the caller's tenant)."""

    model_config = ConfigDict(extra="forbid")

    app: Annotated[str, Field(min_length=1, max_length=128)] | None = None


class MoveOut(BaseModel):
    """One planned move: one instance of ``app`` from ``from_node`` to ``to_node``."""

    app: str
    instance: str
    from_node: str
    to_node: str
    stateful: bool
    per_node: dict[str, int]  # the app's ACTIVE instances per eligible node, before it
    reason: str


class RefusalOut(BaseModel):
    """Why an app is not moved: balanced, waiting (a rollout, a move) or blocked."""

    app: str
    kind: Literal["balanced", "waiting", "blocked"]
    reason: str


class RebalanceOut(BaseModel):
    """What a rebalance will do (``planned``, in order, one at a time), the move it
    started now (``started``), or why none started (``reason``)."""

    app: str | None
    planned: list[MoveOut]
    started: MigrationOut | None
    reason: str
    refusals: list[RefusalOut]

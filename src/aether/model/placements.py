"""Where a deployed agent's replicas run: the value of ``agents/{agent_id}`` in the
state store (written by the leader's agent placement loop, read by the task-claim
handler and, through the assignment stream, by every node's router)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from aether.model.versioned import Versioned

__all__ = ["AGENT_PLACEMENT_PREFIX", "AgentPlacement", "agent_queue"]

AGENT_PLACEMENT_PREFIX = "agents/"


def agent_queue(agent_id: str) -> str:
    """The task queue an agent's runs go to; the nodes placed for it claim from it."""
    return f"agent.{agent_id}"


class AgentPlacement(Versioned):
    """A deployed agent's replicas: the nodes that claim its queue."""

    SCHEMA_NAME: ClassVar[str] = "agent_placement"

    agent_id: str
    tenant: str  # its tenant's name (routers serve it under /t/{tenant}/agents/)
    name: str
    version: int
    replicas: int
    nodes: list[str] = Field(default_factory=list)

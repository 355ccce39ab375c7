"""Deployed agents' placements: the state store's ``agents/{agent_id}`` keys.

The leader's placement loop writes them (``leader/agents.py``); the agents routes
read one to answer a deployment, and remove it when an agent is disabled or
undeployed (its replicas are withdrawn at once, not at the loop's next pass); the
task-claim handler reads them all through :class:`AgentQueues`, a copy refreshed at
most once a second, so a claim costs no extra query.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable

from aether.model.placements import AGENT_PLACEMENT_PREFIX, AgentPlacement, agent_queue
from aether.store.base import StateStore

__all__ = [
    "AgentQueues",
    "placement_key",
    "read_placement",
    "read_placements",
    "withdraw_placement",
]

REFRESH_SECONDS = 1.0


def placement_key(agent_id: str) -> str:
    return f"{AGENT_PLACEMENT_PREFIX}{agent_id}"


async def read_placements(store: StateStore) -> dict[str, AgentPlacement]:
    """Every deployed agent's placement, by agent id."""
    kvs, _ = await store.range(AGENT_PLACEMENT_PREFIX)
    found = (AgentPlacement.model_validate_json(kv.value) for kv in kvs)
    return {p.agent_id: p for p in found}


async def read_placement(store: StateStore, agent_id: str) -> AgentPlacement | None:
    kv = await store.get(placement_key(agent_id))
    return None if kv is None else AgentPlacement.model_validate_json(kv.value)


async def withdraw_placement(store: StateStore, agent_id: str) -> None:
    """No node serves the agent any more (the loop places nothing without a deployment)."""
    await store.delete(placement_key(agent_id))


class AgentQueues:
    """The agent queues each node claims from, as of at most ``REFRESH_SECONDS`` ago."""

    def __init__(self, store: StateStore, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self._by_node: dict[str, list[str]] = {}
        self._read_at: float | None = None
        self._lock = asyncio.Lock()

    async def for_node(self, node: str) -> list[str]:
        """The queues ``agent.{id}`` of the agents placed on ``node``."""
        read_at = self._read_at
        if read_at is None or self.clock() - read_at >= REFRESH_SECONDS:
            await self._refresh()
        return self._by_node.get(node, [])

    async def _refresh(self) -> None:
        async with self._lock:  # one read for the claims that arrive together
            read_at = self._read_at
            if read_at is not None and self.clock() - read_at < REFRESH_SECONDS:
                return
            by_node: dict[str, list[str]] = defaultdict(list)
            for placement in (await read_placements(self.store)).values():
                for node in placement.nodes:
                    by_node[node].append(agent_queue(placement.agent_id))
            self._by_node = dict(by_node)
            self._read_at = self.clock()

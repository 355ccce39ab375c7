"""The claim handler's copy of the agents' placements (``AgentQueues``), over a real
SQLite state store: the queues of the agents placed on a node, read again at most once
a second (a claim costs no query of its own)."""

from __future__ import annotations

from pathlib import Path

from aether.model.placements import AgentPlacement
from aether.server.services.agent_placements import AgentQueues, placement_key
from aether.store import SqliteStateStore


def _placement(agent_id: str, *nodes: str) -> bytes:
    value = AgentPlacement(
        agent_id=agent_id, tenant="default", name=agent_id, version=1, replicas=1, nodes=[*nodes]
    )
    return value.model_dump_json().encode()


async def test_queues_per_node_refreshed_at_most_once_a_second(tmp_path: Path) -> None:
    store = await SqliteStateStore.open(tmp_path / "state.db")
    now = [100.0]
    try:
        await store.put(placement_key("agt_a"), _placement("agt_a", "n1", "n2"))
        queues = AgentQueues(store, clock=lambda: now[0])
        assert await queues.for_node("n1") == ["agent.agt_a"]
        assert await queues.for_node("n2") == ["agent.agt_a"]
        assert await queues.for_node("n3") == []

        await store.put(placement_key("agt_b"), _placement("agt_b", "n1"))
        await store.delete(placement_key("agt_a"))
        now[0] += 0.5  # within the second: the copy as it was, no read
        assert await queues.for_node("n1") == ["agent.agt_a"]
        now[0] += 0.6
        assert await queues.for_node("n1") == ["agent.agt_b"]
        assert await queues.for_node("n2") == []
    finally:
        await store.close()

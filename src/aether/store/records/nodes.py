"""Nodes as the records know them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update

from aether.errors import NotFoundError
from aether.store.records.base import (
    RecordsBase,
    now,
)
from aether.store.records.schema import (
    Node,
)

__all__ = ["NodeRecords"]


class NodeRecords(RecordsBase):
    async def upsert_node(
        self, node_id: str, router_url: str, capabilities: dict[str, Any]
    ) -> Node:
        async with self.sessions() as session:
            node = await session.get(Node, node_id)
            if node is None:
                node = Node(
                    id=node_id,
                    router_url=router_url,
                    capabilities=capabilities,
                    draining=False,
                    registered_at=now(),
                    last_seen_at=now(),
                )
                session.add(node)
            else:
                node.router_url = router_url
                node.capabilities = capabilities
                node.last_seen_at = now()
            await session.commit()
            return node

    async def touch_node(self, node_id: str) -> None:
        async with self.sessions() as session:
            await session.execute(update(Node).where(Node.id == node_id).values(last_seen_at=now()))
            await session.commit()

    async def list_nodes(self) -> Sequence[Node]:
        async with self.sessions() as session:
            return (await session.scalars(select(Node).order_by(Node.id))).all()

    async def set_node_draining(
        self, node_id: str, draining: bool, *, reason: str = "", by: str = ""
    ) -> None:
        """Set the drain flag with why and by whom (cleared when undrained)."""
        values = {
            "draining": draining,
            "drain_reason": reason if draining else "",
            "drained_by": by if draining else "",
        }
        async with self.sessions() as session:
            result = await session.execute(update(Node).where(Node.id == node_id).values(**values))
            await session.commit()
        if not getattr(result, "rowcount", 0):
            raise NotFoundError(f"node {node_id!r} not found")

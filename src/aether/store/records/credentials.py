"""Node credentials: joining, revoking, allowing nodes."""

from __future__ import annotations

from sqlalchemy import func, select, update

from aether.errors import ForbiddenError, NotFoundError
from aether.store.records.base import (
    now,
)
from aether.store.records.schema import (
    ApiToken,
    Node,
)
from aether.store.records.tenants import TenantRecords

__all__ = ["CredentialRecords"]


class CredentialRecords(TenantRecords):
    """Needs ``issue_token`` of the tenants' part: a credential is a token of role node."""

    async def use_join_token(self, token_id: str) -> bool:
        """Take one use of a join token: whether it had one left (a token without a count
        always has). A used-up token stays on record, refused by the join with a reason."""
        async with self.sessions() as session:
            row = await session.get(ApiToken, token_id)
            if row is None or row.revoked_at is not None:
                return False
            if row.uses_left is None:
                return True
            result = await session.execute(
                update(ApiToken)
                .where(ApiToken.id == token_id, ApiToken.uses_left > 0)
                .values(uses_left=ApiToken.uses_left - 1)
            )
            await session.commit()
            return bool(getattr(result, "rowcount", 0))

    async def check_may_join(self, node_id: str) -> None:
        """ForbiddenError ``node_revoked`` when an admin revoked the node and has not
        allowed it again."""
        async with self.sessions() as session:
            node = await session.get(Node, node_id)
            if node is not None and node.revoked_at is not None:
                raise ForbiddenError(
                    f"node {node_id!r} was revoked; a cluster admin must allow it to join "
                    f"again first (`aether nodes allow {node_id}`)",
                    code="node_revoked",
                )

    async def join_node(self, tenant_id: str, node_id: str) -> tuple[str, str, list[str]]:
        """A new credential for ``node_id``: (id, plain text, ids of the ones it replaced).

        ForbiddenError when an admin revoked the node and has not allowed it again.
        """
        await self.check_may_join(node_id)
        replaced = await self._revoke_credentials(node_id)
        token_id, token = await self.issue_token(
            tenant_id, "node", f"node {node_id}", node_id=node_id
        )
        return token_id, token, replaced

    async def _revoke_credentials(self, node_id: str) -> list[str]:
        async with self.sessions() as session:
            ids = list(
                (
                    await session.scalars(
                        select(ApiToken.id).where(
                            ApiToken.node_id == node_id, ApiToken.revoked_at.is_(None)
                        )
                    )
                ).all()
            )
            if ids:
                await session.execute(
                    update(ApiToken).where(ApiToken.id.in_(ids)).values(revoked_at=now())
                )
                await session.commit()
            return ids

    async def revoke_node(self, node_id: str) -> list[str]:
        """Revoke the node's credentials and bar it from joining again; the revoked ids.

        NotFoundError for a node that never joined nor registered.
        """
        async with self.sessions() as session:
            node = await session.get(Node, node_id)
            known = node is not None or bool(
                await session.scalar(
                    select(func.count()).select_from(ApiToken).where(ApiToken.node_id == node_id)
                )
            )
            if not known:
                raise NotFoundError(f"node {node_id!r} not found")
            if node is None:  # joined, never registered: remember the revocation all the same
                node = Node(
                    id=node_id,
                    router_url="",
                    capabilities={"cpus": 0, "memory_mb": 0, "drivers": []},
                    draining=False,
                    registered_at=now(),
                    last_seen_at=now(),
                )
                session.add(node)
            node.revoked_at = now()
            await session.commit()
        return await self._revoke_credentials(node_id)

    async def allow_node(self, node_id: str) -> None:
        """Let a revoked node join again (with a join token)."""
        async with self.sessions() as session:
            result = await session.execute(
                update(Node).where(Node.id == node_id).values(revoked_at=None)
            )
            await session.commit()
        if not getattr(result, "rowcount", 0):
            raise NotFoundError(f"node {node_id!r} not found")

"""Node state shared by the API and the leader's loops: the drain flag.

A draining node takes no new instances and the scheduler moves its instances
elsewhere. The flag lives on the node's key (``nodes/{node}``, what the leader
plans with) and in the records (so it survives the node re-registering), with
why it was set and by whom: an ``operator``, the ``controller`` (layer 1, which
undrains its own drains when the risk is LOW again) or an ``adviser``.
"""

from __future__ import annotations

from aether.core.controller import DRAINED_BY_OPERATOR
from aether.errors import ConflictError
from aether.model.cluster import NodeRecord
from aether.server.cluster import dump, fence_holds
from aether.server.context import ServerContext
from aether.store.base import Compare, Put

__all__ = ["node_key", "set_draining"]


def node_key(node: str) -> str:
    return f"nodes/{node}"


async def set_draining(
    ctx: ServerContext,
    node: str,
    draining: bool,
    *,
    reason: str = "",
    by: str = DRAINED_BY_OPERATOR,
    fence: Compare | None = None,
) -> None:
    """Drain or undrain ``node`` on its key (compare-and-swap) and in the records.

    A node that is down gets the flag in the records only: it applies when the
    node registers again. With ``fence`` (a leader's) nothing changes once that
    leadership has ended. Raises NotFoundError for a node that never registered.
    """
    reason = reason[:500] if draining else ""
    by = by if draining else ""
    for _ in range(10):
        kv = await ctx.store.get(node_key(node))
        if kv is None:
            break  # down: the records carry the flag to its next registration
        record = NodeRecord.model_validate_json(kv.value).model_copy(
            update={"draining": draining, "drain_reason": reason, "drained_by": by}
        )
        compares = [Compare(kv.key, "mod_revision", "==", kv.mod_revision)]
        if fence is not None:
            compares.append(fence)
        result = await ctx.store.txn(compares, [Put(kv.key, dump(record), lease=kv.lease)])
        if result.succeeded:
            break
        if fence is not None and not await fence_holds(ctx.store, fence):
            raise ConflictError(f"no longer the leader: node {node} was left as it was")
    else:
        raise ConflictError(f"node {node}'s record kept changing; try again")
    await ctx.records.set_node_draining(node, draining, reason=reason, by=by)

"""Node state shared by the API and the leader's loops: the drain flag, and what a
node may touch (what is assigned to it).

A draining node takes no new instances and the scheduler moves its instances
elsewhere. The flag lives on the node's key (``nodes/{node}``, what the leader
plans with) and in the records (so it survives the node re-registering), with
why it was set and by whom: an ``operator``, the ``controller`` (layer 1, which
undrains its own drains when the risk is LOW again) or an ``adviser``.
"""

from __future__ import annotations

from aether.core.controller import DRAINED_BY_OPERATOR
from aether.errors import ConflictError, NotFoundError
from aether.model.cluster import InstanceRecord, NodeRecord
from aether.model.tasks import TaskOut, TaskState
from aether.server.context import ServerContext
from aether.server.services.cluster import dump, fence_holds
from aether.store.base import Compare, Put

__all__ = ["assigned", "held_task", "node_key", "node_may_read", "set_draining"]


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


async def assigned(ctx: ServerContext, node: str) -> list[InstanceRecord]:
    """The instances under ``instances/{node}/``: all a node may act on, with its tasks."""
    kvs, _ = await ctx.store.range(f"instances/{node}/")
    return [InstanceRecord.model_validate_json(kv.value) for kv in kvs]


async def held_task(ctx: ServerContext, task_id: str, node: str) -> TaskOut | None:
    """The task if ``node`` holds its claim right now (active, claimed by it), else None."""
    try:
        task = await ctx.queue.get(task_id)
    except NotFoundError:
        return None
    if task.state is not TaskState.ACTIVE or task.claimed_by != node:
        return None
    return task


async def node_may_read(ctx: ServerContext, node: str, digest: str, task_id: str | None) -> bool:
    """Whether ``node`` may download the artifact or snapshot ``digest``: one of its
    instances runs it or restores it, it took that snapshot, or ``task_id`` is a task it
    holds that needs it."""
    for record in await assigned(ctx, node):
        if digest in (record.digest, record.restore_from, record.snapshot):
            return True
    if await ctx.records.snapshot_taken_on(node, digest):  # its own checkpoint
        return True
    if task_id:
        task = await held_task(ctx, task_id, node)
        if task is not None and task.payload.get("digest") == digest:
            return True
    return False

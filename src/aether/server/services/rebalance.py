"""Rebalancing, the shell around ``core.rebalance``: read the view, start a move, record it.

The leader's automatic step (``server/leader/rebalance.py``) and ``POST
/api/v1/rebalance`` share it. A move is an ordinary migration
(``services.migrations.request_migration``): the planner starts the new copy
before it stops the old one (stateless) or checkpoints and restores it
(stateful). Each move started is recorded as a controller decision (kind
``rebalance``) with its reason, the figures it saw and its outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aether.core.rebalance import (
    CHECKPOINT_FEATURES,
    Move,
    RebalanceView,
    plan_moves,
    propose,
)
from aether.errors import AetherError, NotFoundError
from aether.model.decisions import Decision
from aether.model.names import split_cluster_name
from aether.model.rebalance import MoveOut, RebalanceOut, RefusalOut
from aether.server.context import ServerContext
from aether.server.services.audit import record_controller_action
from aether.server.services.cluster import ClusterSnapshot, read_snapshot
from aether.server.services.migrations import migration_out, request_migration
from aether.store.records.schema import DecisionRow, MigrationRecord

__all__ = [
    "Observed",
    "move_decision",
    "move_out",
    "observe",
    "rebalance_now",
    "record_decision",
    "start_move",
]

RequestedBy = Literal["automatic", "operator"]


@dataclass(frozen=True)
class Observed:
    """The decision's view and each app's tenant (whose migration a move is)."""

    view: RebalanceView
    tenants: dict[str, str]


def _checkpoint_methods(snap: ClusterSnapshot) -> dict[str, frozenset[str]]:
    return {
        node_id: frozenset(m for m, f in CHECKPOINT_FEATURES.items() if record.config.get(f))
        for node_id, (record, _) in snap.nodes.items()
    }


async def observe(
    ctx: ServerContext, *, tenant_id: str | None = None, app: str | None = None
) -> Observed:
    """The cluster as the rebalance decision sees it; with ``tenant_id`` only that
    tenant's apps are considered, with ``app`` only that one (another tenant's is a 404)."""
    snap = await read_snapshot(ctx.store)
    in_flight = len(await ctx.records.open_migrations())
    tenants = {bp.app: bp.tenant for bp, _ in snap.blueprints.values()}
    only: set[str] | None = None
    if tenant_id is not None:
        only = {name for name, tenant in tenants.items() if tenant == tenant_id}
    if app is not None:
        if app not in tenants or (only is not None and app not in only):
            plain = split_cluster_name(app)[0]
            raise NotFoundError(f"app {plain!r} has no live deployment; `aether apps` lists them")
        only = {app}
    methods = {
        bp.app: bp.spec.checkpoint.method for bp, _ in snap.blueprints.values() if bp.spec.stateful
    }
    view = RebalanceView(
        apps=snap.desired(),
        nodes=snap.node_views(),
        instances=snap.instance_views(),
        checkpoint=_checkpoint_methods(snap),
        methods=methods,
        in_flight=in_flight,
        only=only,
    )
    return Observed(view, tenants)


def move_out(move: Move) -> MoveOut:
    return MoveOut(
        app=move.app,
        instance=move.instance,
        from_node=move.from_node,
        to_node=move.to_node,
        stateful=move.stateful,
        per_node=dict(move.per_node),
        reason=move.reason,
    )


def move_decision(move: Move, tenant: str, requested_by: RequestedBy) -> Decision:
    """The controller decision that records ``move``."""
    counts = move.per_node.values()
    return Decision(
        layer=1,
        kind="rebalance",
        target=move.app,
        action={"instance": move.instance, "from": move.from_node, "to": move.to_node},
        inputs={
            "per_node": dict(move.per_node),
            "spread": max(counts) - min(counts),
            "stateful": move.stateful,
            "requested_by": requested_by,
        },
        reason=move.reason,
        tenant=tenant,
    )


async def record_decision(
    ctx: ServerContext, decision: Decision, outcome: str, detail: str, now: float
) -> DecisionRow:
    row = await ctx.records.record_decision(decision, outcome, detail, now)
    if decision.action.get("requested_by") == "automatic":  # the API's moves: the caller's
        await record_controller_action(ctx, decision, row, outcome, detail)
    return row


async def start_move(
    ctx: ServerContext, move: Move, tenant: str, requested_by: RequestedBy, now: float
) -> MigrationRecord:
    """Start ``move`` as a migration and record the decision (applied, or failed and
    raised again)."""
    decision = move_decision(move, tenant, requested_by)
    try:
        row = await request_migration(
            ctx, tenant, move.instance, move.to_node, reason=f"rebalance: {move.reason}"
        )
    except AetherError as exc:
        await record_decision(ctx, decision, "failed", exc.message, now)
        raise
    decision.action["migration"] = row.id
    await record_decision(ctx, decision, "applied", "", now)
    return row


async def rebalance_now(
    ctx: ServerContext, tenant_id: str, app: str | None, now: float
) -> RebalanceOut:
    """Plan the caller's moves and start the first one, unless a migration is in flight."""
    seen = await observe(ctx, tenant_id=tenant_id, app=app)
    planned = plan_moves(seen.view)
    step = propose(seen.view)
    started = None
    if step.move is not None:
        row = await start_move(ctx, step.move, seen.tenants[step.move.app], "operator", now)
        started = migration_out(row)
    reason = step.reason
    if step.move is None and planned:
        reason = f"{len(planned)} move(s) planned, waiting: {step.reason}"
    return RebalanceOut(
        app=app,
        planned=[move_out(m) for m in planned],
        started=started,
        reason=reason,
        refusals=[RefusalOut(app=r.app, kind=r.kind, reason=r.reason) for r in step.refusals],
    )

"""Audit events for what the cluster does by itself: the controller's scale, drain
and undrain decisions and the automatic rebalance's migrations, with actor
``controller`` and the id of the decision they carry out."""

from __future__ import annotations

import logging
import time

from aether.model.decisions import Decision
from aether.server.context import ServerContext
from aether.store.records.audit import AuditEntry
from aether.store.records.schema import DecisionRow

__all__ = ["record_controller_action"]

log = logging.getLogger("aether.audit")

_ACTIONS = {"scale": "scale", "drain": "drain", "undrain": "undrain", "rebalance": "migrate"}
_TARGETS = {"scale": "apps", "drain": "nodes", "undrain": "nodes", "rebalance": "apps"}
_OUTCOMES = {"applied": "ok", "failed": "failed"}


async def record_controller_action(
    ctx: ServerContext, decision: Decision, row: DecisionRow, outcome: str, detail: str
) -> None:
    """Append the event of an applied or failed decision (a refused one did nothing).

    The controller does not stop acting when the audit log cannot be written (it
    heals the cluster); the event then goes to the ``aether.audit`` log.
    """
    if outcome not in _OUTCOMES or decision.kind not in _ACTIONS:
        return
    entry = AuditEntry(
        ts=time.time(),
        actor_kind="controller",
        actor="controller",
        action=f"controller.{_ACTIONS[decision.kind]}",
        target=f"{_TARGETS[decision.kind]}/{decision.target}",
        outcome=_OUTCOMES[outcome],
        tenant_id=decision.tenant,
        decision_id=row.id,
        detail=f"{decision.reason} [{detail}]" if detail else decision.reason,
    )
    try:
        await ctx.records.append_audit(entry)
    except Exception:
        log.exception("audit event of decision %d not written: %s", row.id, entry)

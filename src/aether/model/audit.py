"""The audit trail's vocabulary: one event (who did what, to which object, how it
ended, from where), a page of them, and the verdict of walking the hash chain."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

__all__ = ["ActorKind", "AuditEventOut", "AuditOutcome", "AuditPage", "AuditVerdict"]

#: ``user`` is kept for accounts (tokens act for now); ``anonymous``: no valid credential.
ActorKind = Literal["token", "node", "controller", "user", "anonymous"]
AuditOutcome = Literal["ok", "refused", "failed"]


class AuditEventOut(BaseModel):
    id: int
    ts: float
    tenant_id: str | None
    tenant: str | None
    actor_kind: str
    actor: str
    role: str | None
    action: str
    target: str
    outcome: str
    status: int | None
    source: str | None
    trace_id: str | None
    decision_id: int | None
    detail: str
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    """``cursor``: pass it as ``before`` (newest-first pages) or ``after`` (oldest-first,
    with ``after``) for the next page; None when this page was the last."""

    events: list[AuditEventOut]
    cursor: int | None


class AuditVerdict(BaseModel):
    """``first_bad``: the id of the first row that breaks the chain (None when intact)."""

    ok: bool
    checked: int
    anchor_id: int
    head_id: int
    first_bad: int | None = None
    reason: str = ""

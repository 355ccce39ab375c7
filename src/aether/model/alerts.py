"""Alerts and silences on the wire (``/api/v1/alerts``)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, Field

from aether.model.versioned import Versioned

__all__ = ["AlertOut", "AlertRecord", "SilenceIn", "SilenceOut"]


class AlertOut(BaseModel):
    fingerprint: str
    rule: str
    labels: dict[str, str]
    tenant: str | None  # None: a cluster alert
    state: str  # pending | firing | resolved
    severity: str
    value: float
    started_at: float
    updated_at: float
    fired_at: float | None
    resolved_at: float | None
    silenced: bool
    # the webhook per notification ("firing", "resolved"): attempts, error, delivered_at, failed
    notify: dict[str, Any]
    runbook_task: str | None
    runbook_output: str | None


class SilenceIn(BaseModel):
    matchers: Annotated[dict[str, Annotated[str, Field(max_length=256)]], Field(min_length=1)]
    duration: Annotated[float, Field(gt=0, le=90 * 86400)] = 3600.0  # seconds from now
    comment: Annotated[str, Field(max_length=1024)] = ""


class SilenceOut(BaseModel):
    id: str
    tenant: str | None
    matchers: dict[str, str]
    starts_at: float
    ends_at: float
    comment: str
    created_by: str
    active: bool


class AlertRecord(Versioned):
    """An alert's latest change of state, ``alerts/{fingerprint}`` in the state store
    (the leader writes it; the event stream turns it into an ``alert`` event)."""

    SCHEMA_NAME: ClassVar[str] = "alert"

    fingerprint: str
    rule: str
    labels: dict[str, str]
    tenant: str | None = None
    state: str
    severity: str = "warning"
    value: float
    started_at: float
    fired_at: float | None = None
    resolved_at: float | None = None
    previous: str | None = None
    silenced: bool = False
    tenant_id: str | None = None

"""Raw cluster changes → typed events, pure (no I/O, no clock).

The event stream (``GET /api/v1/events``) reads three shared sources that every
server can watch: the state store (``nodes/``, ``instances/``, ``blueprints/``,
``leader``, ``alerts/``, with revisions), rows of the records database (deployment
events, decisions, risk assessments, with increasing ids) and the task queue's
event log (task state changes, with increasing positions). This module turns
one change of either into a :class:`ClusterEvent` (or nothing), says who may
see it and whether it passes a client's filters, and decides when a resume
from a ``Last-Event-ID`` is too old to be honest.

A store change carries no previous value, so the mapping uses the key's
``version`` (1: the key was just created) and the new value alone: it never
needs what the stream saw before, and a resumed stream maps a replayed change
exactly as a live one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping
from typing import Any

from aether.model.events import EVENT_TYPES, ClusterEvent, Cursor, Scope
from aether.model.names import shown_name
from aether.model.tasks import TaskEvent

__all__ = [
    "MIGRATION_STEPS",
    "as_seen_by",
    "from_decision",
    "from_deployment_event",
    "from_risk",
    "from_store",
    "from_task_event",
    "matches",
    "parse_filter",
    "resolved",
    "resume_gap",
    "sse",
    "unknown_types",
    "visible",
]

#: deployment-event types that are a migration's steps (``migration`` events)
MIGRATION_STEPS = frozenset(
    {
        "migration_requested",
        "migration_checkpointing",
        "migration_restoring",
        "migrated",
        "migration_failed",
    }
)


def _json(value: bytes) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        loaded = json.loads(value)
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _instance_parts(key: str) -> tuple[str, str, int, int] | None:
    """``instances/NODE/APP@VERSION/N`` → (node, app, version, n)."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "instances":
        return None
    app, _, version = parts[2].rpartition("@")
    if not app or not version.isdigit() or not parts[3].isdigit():
        return None
    return parts[1], app, int(version), int(parts[3])


def from_store(
    kind: str,
    key: str,
    value: bytes,
    *,
    version: int,
    ts: float,
    tenants: Mapping[str, str],
) -> ClusterEvent | None:
    """The event of one state store change, or None when it is not one people follow.

    ``kind`` is ``PUT`` or ``DELETE``; ``version`` the key's version after a PUT
    (1 when it was created); ``tenants`` maps apps' cluster names (the keys'
    ``{app}``, ``model.names``) to their tenant's id, for
    deletions, whose value is empty (an app the map lacks: the event is dropped,
    since nobody could be shown it safely).
    """
    record = _json(value) if kind == "PUT" else None
    if key.startswith("nodes/"):
        node = key.removeprefix("nodes/")
        if kind == "DELETE":
            fields: dict[str, Any] = {
                "reason": "its lease ended (stopped heartbeating, restarted or revoked)"
            }
            return ClusterEvent(
                type="node_lost", target=node, ts=ts, scope="cluster", node=node, fields=fields
            )
        if record is None:
            return None
        if version <= 1:
            caps = record.get("capabilities") or {}
            fields = {
                "router_url": record.get("router_url", ""),
                "drivers": list(caps.get("drivers", [])) if isinstance(caps, dict) else [],
                "draining": bool(record.get("draining", False)),
            }
            return ClusterEvent(
                type="node_joined", target=node, ts=ts, scope="cluster", node=node, fields=fields
            )
        draining = bool(record.get("draining", False))
        fields = {"reason": record.get("drain_reason", ""), "by": record.get("drained_by", "")}
        return ClusterEvent(
            type="node_drained" if draining else "node_undrained",
            target=node,
            ts=ts,
            scope="cluster",
            node=node,
            fields=fields if draining else {},
        )
    if key == "leader":
        leader = value.decode(errors="replace") if kind == "PUT" and value else None
        return ClusterEvent(
            type="leader_changed",
            target=leader or "",
            ts=ts,
            scope="cluster",
            fields={"leader": leader},
        )
    if key.startswith("instances/"):
        parts = _instance_parts(key)
        if parts is None:
            return None
        node, app, app_version, n = parts
        tenant = _owner(kind, app, record, tenants)
        if tenant is None:
            return None
        fields = {"instance": key, "version": app_version, "n": n}
        if kind != "DELETE" and record is not None:
            fields |= {
                "state": record.get("state"),
                "command": record.get("command"),
                "message": str(record.get("message") or "")[:512],
            }
        return ClusterEvent(
            type="instance_removed" if kind == "DELETE" else "instance_state",
            target=app,
            ts=ts,
            tenant=tenant,
            app=app,
            node=node,
            fields=fields,
        )
    if key.startswith("blueprints/"):
        app = key.removeprefix("blueprints/")
        tenant = _owner(kind, app, record, tenants)
        if tenant is None:
            return None
        fields = {"deleted": True}
        if kind != "DELETE" and record is not None:
            fields = {
                "deleted": False,
                "version": record.get("version"),
                "deployment_id": record.get("deployment_id"),
                "instances": record.get("instances"),
                "strategy": record.get("strategy"),
                "promoted": record.get("promoted", False),
            }
        return ClusterEvent(
            type="blueprint_changed", target=app, ts=ts, tenant=tenant, app=app, fields=fields
        )
    if key.startswith("alerts/"):
        return _alert(key, record, ts) if record is not None else None
    return None


def _alert(key: str, record: dict[str, Any], ts: float) -> ClusterEvent | None:
    """An alert's state change (the leader writes ``alerts/{fingerprint}`` on each): a
    tenant's (its apps', its queues') seen by that tenant, the cluster's by its operators."""
    labels = record.get("labels")
    rule, state = record.get("rule"), record.get("state")
    if not isinstance(labels, dict) or not isinstance(rule, str) or not isinstance(state, str):
        return None
    tenant_id = record.get("tenant_id")
    tenant = tenant_id if isinstance(tenant_id, str) and tenant_id else None
    app, node = labels.get("app"), labels.get("node")
    return ClusterEvent(
        type="alert",
        target=rule,
        ts=ts,
        scope="tenant" if tenant is not None else "operator",
        tenant=tenant,
        app=app if isinstance(app, str) else None,
        node=node if isinstance(node, str) else None,
        fields={
            "fingerprint": key.removeprefix("alerts/"),
            "rule": rule,
            "state": state,
            "previous": record.get("previous"),
            "labels": labels,
            "severity": record.get("severity"),
            "value": record.get("value"),
            "silenced": bool(record.get("silenced", False)),
        },
    )


def _owner(
    kind: str, app: str, record: dict[str, Any] | None, tenants: Mapping[str, str]
) -> str | None:
    """The tenant of an app's key: from the record put, or (a delete carries no record)
    from ``tenants``, the apps' owners by cluster name; None: not a tenant's."""
    if kind == "DELETE":
        return tenants.get(app)
    tenant = record.get("tenant") if record is not None else None
    return tenant if isinstance(tenant, str) else None


def from_deployment_event(
    *,
    row_id: int,
    step: str,
    message: str,
    app: str,
    version: int,
    deployment_id: str,
    tenant: str,
    ts: float,
) -> ClusterEvent:
    """A deployment's timeline entry: a ``migration`` step or a ``deployment`` one."""
    return ClusterEvent(
        type="migration" if step in MIGRATION_STEPS else "deployment",
        target=app,
        ts=ts,
        tenant=tenant,
        app=app,
        fields={
            "step": step,
            "message": message,
            "version": version,
            "deployment_id": deployment_id,
            "event_id": row_id,
        },
    )


def from_decision(
    *,
    decision_id: int,
    ts: float,
    layer: int,
    kind: str,
    target: str,
    action: dict[str, Any],
    reason: str,
    outcome: str,
    detail: str,
    tenant: str | None,
) -> ClusterEvent:
    """A controller decision, seen as ``GET /decisions`` shows it: a tenant's apps' own,
    every drain and undrain, and the rest (adviser failures) by cluster admins only."""
    node_level = kind in ("drain", "undrain")
    scope: Scope = "tenant" if tenant is not None else ("cluster" if node_level else "admin")
    return ClusterEvent(
        type="decision",
        target=target,
        ts=ts,
        scope=scope,
        tenant=tenant,
        app=target if tenant is not None else None,
        node=target if node_level else None,
        fields={
            "decision_id": decision_id,
            "layer": layer,
            "kind": kind,
            "action": action,
            "reason": reason,
            "outcome": outcome,
            "detail": detail,
        },
    )


def from_risk(
    *,
    node: str,
    status: str,
    previous: str | None,
    confidence: float,
    root_cause: str,
    rule: str,
    ts: float,
) -> ClusterEvent | None:
    """A node's risk assessment, when its status differs from the node's previous one
    (the engine also rewrites an unchanged verdict once a minute: not a change)."""
    if status == previous:
        return None
    return ClusterEvent(
        type="risk_changed",
        target=node,
        ts=ts,
        scope="cluster",
        node=node,
        fields={
            "status": status,
            "previous": previous,
            "confidence": confidence,
            "root_cause": root_cause,
            "rule": rule,
        },
    )


def from_task_event(event: TaskEvent) -> ClusterEvent:
    """A task's state change, seen by its tenant (and the cluster admins): about the
    task (its id is the target) and, while a claim is involved, the node."""
    return ClusterEvent(
        type="task_state",
        target=event.task_id,
        ts=event.ts,
        tenant=event.tenant_id,
        node=event.node,
        fields={
            "task_type": event.task_type,
            "state": event.state.value,
            "previous": None if event.previous is None else event.previous.value,
            "queue": event.queue,
            "priority": event.priority,
            "attempt": event.attempt,
            "error": event.error,
        },
    )


def visible(
    event: ClusterEvent, tenant: str, *, cluster_admin: bool, cluster_operator: bool = False
) -> bool:
    """Whether a caller of ``tenant`` may see ``event`` (cluster admins see everything;
    the cluster's operators, the default tenant's, also its ``operator`` events and every
    alert, as ``GET /api/v1/alerts`` shows them)."""
    if cluster_admin or event.scope == "cluster":
        return True
    if cluster_operator and (event.scope == "operator" or event.type == "alert"):
        return True
    if event.scope == "operator":
        return False
    if event.scope == "admin":
        return False
    return event.tenant == tenant


def as_seen_by(event: ClusterEvent, tenant: str) -> ClusterEvent:
    """``event`` as tenant ``tenant`` (its name) reads it: its own app by the plain name
    (the state store's keys name it by its cluster name, ``model.names``)."""
    if event.app is None:
        return event
    shown = shown_name(event.app, tenant)
    if shown == event.app:
        return event
    target = shown if event.target == event.app else event.target
    return event.model_copy(update={"app": shown, "target": target})


def parse_filter(values: Collection[str]) -> frozenset[str] | None:
    """Query values (repeated, or comma-separated) → a set; None when empty (no filter)."""
    out = {part.strip() for value in values for part in value.split(",") if part.strip()}
    return frozenset(out) or None


def unknown_types(types: Collection[str]) -> list[str]:
    """The names in ``types`` that are no event type (sorted)."""
    return sorted(t for t in types if t not in EVENT_TYPES)


def matches(
    event: ClusterEvent, types: Collection[str] | None, targets: Collection[str] | None
) -> bool:
    """Whether ``event`` passes the filters: its type is one of ``types``, and its
    target, app or node is one of ``targets`` (None: no filter)."""
    if types is not None and event.type not in types:
        return False
    if targets is None:
        return True
    return any(
        name is not None and name in targets for name in (event.target, event.app, event.node)
    )


def resolved(requested: Cursor, current: Cursor) -> Cursor:
    """``requested``, where a four-part id left the task position out, at ``current``'s
    (such a stream resumes everything else and takes task changes from now)."""
    if requested.task is not None:
        return requested
    return dataclasses.replace(requested, task=current.task)


def resume_gap(requested: Cursor, current: Cursor, limit: int) -> str | None:
    """Why a stream cannot resume after ``requested`` (None: it can).

    It can when nothing it names lies ahead of the cluster (a restored or another
    cluster's history) and it is at most ``limit`` store revisions, ``limit``
    rows of each record source and ``limit`` task positions behind ``current``.
    A four-part id is behind on tasks by nothing (see ``resolved``).
    """
    asked_task = resolved(requested, current).task or 0
    pairs = (
        ("store revision", requested.revision, current.revision),
        ("deployment event", requested.deployment_event, current.deployment_event),
        ("decision", requested.decision, current.decision),
        ("risk assessment", requested.risk, current.risk),
        ("task event", asked_task, current.task or 0),
    )
    for what, asked, now in pairs:
        if asked > now:
            return (
                f"cannot resume from {requested}: its {what} {asked} is ahead of this "
                f"cluster's ({now}); the history was reset. Re-read the current state; "
                f"events go on from {current}"
            )
    for what, asked, now in pairs:
        if now - asked > limit:
            return (
                f"cannot resume from {requested}: it is {now - asked} {what}s behind, more "
                f"than the {limit} kept for resuming; events in between are lost. Re-read "
                f"the current state; events go on from {current}"
            )
    return None


def sse(event: str, event_id: str | None, data: Mapping[str, Any]) -> bytes:
    """One Server-Sent Events message."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

"""The versioned schemas: every node↔server message, stored record and event payload,
with its version and the upcasters from older versions (pure; ``GET /api/v1/schemas``).

Every payload carries its version: ``"schema": <version>`` (``model.versioned``'s
``Versioned`` writes it; the endpoint record, whose ``schema`` key has named a slice
entry's description since 0.1.0, writes ``schema_version``; the event stream's
``ClusterEvent.wire`` adds it). A payload without one is version 1 (everything 0.1.0
wrote). Adding an optional field does not bump a version (readers ignore what they do
not know, and a missing field takes its default); renaming, removing or changing the
meaning of a field does: the model's ``SCHEMA_VERSION``, its version field's default
and the entry here go up by one, and an upcaster from the previous version goes into
:data:`UPCASTERS`. Readers (every ``Versioned`` model, as it validates a payload)
:func:`upcast` what older nodes and servers still send or stored, and refuse what a
newer one wrote (:class:`SchemaTooNewError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from aether.model.alerts import AlertRecord
from aether.model.api import (
    AssignmentLine,
    HeartbeatIn,
    HeartbeatOut,
    InstanceSecretsOut,
    JoinIn,
    JoinOut,
    LogsIn,
    LogsOut,
    RegisterIn,
    RegisterOut,
    ReportIn,
    ReportOut,
    RoutesIn,
    RoutesOut,
    ServerOut,
    UnloadedOut,
    WithdrawalOut,
)
from aether.model.blueprints import BlueprintRecord
from aether.model.cluster import Blueprint, Endpoint, InstanceRecord, NodeRecord
from aether.model.diag import DiagRequestRecord, NodePartIn
from aether.model.events import ClusterEvent
from aether.model.migrations import SnapshotOut
from aether.model.placements import AgentPlacement
from aether.model.tasks import (
    ClaimIn,
    ExchangeIn,
    ExchangeOut,
    SandboxRecord,
    TaskCompleteIn,
    TaskFailIn,
    TaskHeartbeatOut,
    TaskHolderIn,
    TaskOut,
)
from aether.model.telemetry import NodeMetrics, PushAnswer
from aether.model.trust import CertificateIn, CertificateOut, TrustRecord
from aether.model.versioned import (
    UPCASTERS,
    VERSION_FIELD,
    SchemaTooNewError,
    Upcaster,
    Versioned,
    upcast_to,
    version_of,
)

__all__ = [
    "SCHEMAS",
    "UPCASTERS",
    "VERSION_FIELD",
    "Schema",
    "SchemaTooNewError",
    "Upcaster",
    "catalogue",
    "current",
    "stamp",
    "upcast",
    "version_of",
]

Kind = Literal["message", "record", "event"]


@dataclass(frozen=True)
class Schema:
    name: str
    kind: Kind
    version: int
    model: type[BaseModel]
    description: str

    @property
    def field(self) -> str:
        """The key its payloads carry their version under."""
        return self.model.SCHEMA_KEY if issubclass(self.model, Versioned) else VERSION_FIELD


SCHEMAS: tuple[Schema, ...] = (
    Schema("join", "message", 1, JoinIn, "node → server: POST /nodes/join, its CSR"),
    Schema("join_reply", "message", 1, JoinOut, "server → node: credential, certificate"),
    Schema("certificate", "message", 1, CertificateIn, "node → server: a renewal's CSR"),
    Schema("certificate_reply", "message", 1, CertificateOut, "server → node: the renewal"),
    Schema("register", "message", 1, RegisterIn, "node → server: POST /nodes/register"),
    Schema("register_reply", "message", 1, RegisterOut, "server → node: its lease and config"),
    Schema("heartbeat", "message", 1, HeartbeatIn, "node → server: its lease is alive"),
    Schema(
        "heartbeat_reply", "message", 1, HeartbeatOut, "server → node: lease ttl, CAs, diag ask"
    ),
    Schema("assignment", "message", 1, AssignmentLine, "server → node: a line of its assignments"),
    Schema("report", "message", 1, ReportIn, "node → server: an instance's state"),
    Schema("report_reply", "message", 1, ReportOut, "server → node: a report's revision"),
    Schema(
        "routes",
        "message",
        1,
        RoutesIn,
        "node → server: what its router applied (kept: routes/{node})",
    ),
    Schema(
        "withdrawal_reply", "message", 1, WithdrawalOut, "server → node: routers done with a URL"
    ),
    Schema("telemetry", "message", 1, NodeMetrics, "node → server: one metrics push"),
    Schema("telemetry_reply", "message", 1, PushAnswer, "server → node: a push's answer"),
    Schema("logs", "message", 1, LogsIn, "node → server: instances' output"),
    Schema("logs_reply", "message", 1, LogsOut, "server → node: how many lines were kept"),
    Schema("routes_reply", "message", 1, RoutesOut, "server → node: routes/{node}'s revision"),
    Schema(
        "unloaded_reply",
        "message",
        1,
        UnloadedOut,
        "server → node: DELETE /nodes/{node}/instances/…, the record gone",
    ),
    Schema(
        "instance_secrets",
        "message",
        1,
        InstanceSecretsOut,
        "server → node: an instance's secret env values and files",
    ),
    Schema("diag_part", "message", 1, NodePartIn, "node → server: its part of a diag bundle"),
    Schema("task_claim", "message", 1, ClaimIn, "node → server: POST /tasks/claim"),
    Schema("task_exchange", "message", 1, ExchangeIn, "node → server: results in, tasks out"),
    Schema(
        "task_exchange_reply", "message", 1, ExchangeOut, "server → node: reports' fates, tasks"
    ),
    Schema("task", "message", 1, TaskOut, "server → node: a claimed task (and the task API's)"),
    Schema(
        "snapshot", "message", 1, SnapshotOut, "server → node: a stored snapshot (and the API's)"
    ),
    Schema(
        "task_heartbeat", "message", 1, TaskHolderIn, "node → server: POST /tasks/{id}/heartbeat"
    ),
    Schema(
        "task_heartbeat_reply", "message", 1, TaskHeartbeatOut, "server → node: still its to run"
    ),
    Schema("task_complete", "message", 1, TaskCompleteIn, "node → server: a task's result"),
    Schema("task_fail", "message", 1, TaskFailIn, "node → server: a task's failure"),
    Schema("instance", "record", 1, InstanceRecord, "state store: instances/{node}/…"),
    Schema("blueprint", "record", 1, Blueprint, "state store: blueprints/{app}"),
    Schema("node", "record", 1, NodeRecord, "state store: nodes/{node}"),
    Schema("endpoint", "record", 1, Endpoint, "state store: endpoints/… (schema_version)"),
    Schema("agent_placement", "record", 1, AgentPlacement, "state store: agents/{agent_id}"),
    Schema("blueprint_file", "record", 1, BlueprintRecord, "state store: blueprint-files/…"),
    Schema("server", "record", 1, ServerOut, "state store: servers/{url}, a live server"),
    Schema("trust", "record", 1, TrustRecord, "state store: trust/authorities"),
    Schema("sandbox", "record", 1, SandboxRecord, "state store: sandboxes/{node}/{id}"),
    Schema("alert", "record", 1, AlertRecord, "state store: alerts/{fingerprint}, a change"),
    Schema(
        "diag_request", "record", 1, DiagRequestRecord, "state store: diag/{id}, an open bundle"
    ),
    Schema("event", "event", 1, ClusterEvent, "GET /events: one cluster event"),
)


def _by_name() -> dict[str, Schema]:
    return {schema.name: schema for schema in SCHEMAS}


def current(name: str) -> int:
    """The version this code writes of schema ``name``."""
    return _by_name()[name].version


def stamp(name: str, payload: dict[str, Any], version: int | None = None) -> dict[str, Any]:
    """``payload`` as written at ``version`` (default: the current one)."""
    schema = _by_name()[name]
    return {**payload, schema.field: schema.version if version is None else version}


def upcast(
    name: str,
    payload: Mapping[str, Any],
    *,
    target: int | None = None,
    upcasters: Mapping[tuple[str, int], Upcaster] = UPCASTERS,
) -> dict[str, Any]:
    """``payload`` of schema ``name`` brought up to ``target`` (default: the current
    version) by the upcasters in turn, stamped with it; without its version field it is
    version 1. A payload newer than ``target`` is a :class:`SchemaTooNewError`."""
    schema = _by_name()[name]
    target = schema.version if target is None else target
    return upcast_to(name, payload, target, field=schema.field, upcasters=upcasters)


def catalogue() -> list[dict[str, Any]]:
    """Every schema with its version and JSON schema (``GET /api/v1/schemas``)."""
    return [
        {
            "name": schema.name,
            "kind": schema.kind,
            "version": schema.version,
            "version_field": schema.field,
            "description": schema.description,
            "json_schema": schema.model.model_json_schema(),
        }
        for schema in SCHEMAS
    ]

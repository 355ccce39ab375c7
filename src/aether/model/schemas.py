"""The versioned schemas: every node↔server message, stored record and event payload,
with its version and the upcasters from older versions (pure; ``GET /api/v1/schemas``).

A payload's version is its ``"schema"`` field; a payload without one is version 1
(everything 0.1.0 wrote, and every schema still at 1). Adding an optional field does
not bump a version (readers ignore what they do not know, and a missing field takes
its default); renaming, removing or changing the meaning of a field does: the schema's
version goes up by one, its writers stamp it (:func:`stamp`), and an upcaster from the
previous version goes into :data:`UPCASTERS` so that readers :func:`upcast` what older
nodes and servers still send or stored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from aether.model.api import (
    HeartbeatIn,
    LogsIn,
    RegisterIn,
    RegisterOut,
    ReportIn,
    RoutesIn,
)
from aether.model.cluster import Blueprint, Endpoint, InstanceRecord, NodeRecord
from aether.model.events import ClusterEvent
from aether.model.telemetry import NodeMetrics, PushAnswer

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

VERSION_FIELD = "schema"

Kind = Literal["message", "record", "event"]
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Schema:
    name: str
    kind: Kind
    version: int
    model: type[BaseModel]
    description: str


SCHEMAS: tuple[Schema, ...] = (
    Schema("register", "message", 1, RegisterIn, "node → server: POST /nodes/register"),
    Schema("register_reply", "message", 1, RegisterOut, "server → node: its lease and config"),
    Schema("heartbeat", "message", 1, HeartbeatIn, "node → server: its lease is alive"),
    Schema("report", "message", 1, ReportIn, "node → server: an instance's state"),
    Schema("routes", "message", 1, RoutesIn, "node → server: what its router applied"),
    Schema("telemetry", "message", 1, NodeMetrics, "node → server: one metrics push"),
    Schema("telemetry_reply", "message", 1, PushAnswer, "server → node: a push's answer"),
    Schema("logs", "message", 1, LogsIn, "node → server: instances' output"),
    Schema("instance", "record", 1, InstanceRecord, "state store: instances/{node}/…"),
    Schema("blueprint", "record", 1, Blueprint, "state store: blueprints/{app}"),
    Schema("node", "record", 1, NodeRecord, "state store: nodes/{node}"),
    Schema("endpoint", "record", 1, Endpoint, "state store: endpoints/…"),
    Schema("event", "event", 1, ClusterEvent, "GET /events: one cluster event"),
)

# (schema name, version it reads) → the payload one version later; empty while every
# schema is at version 1
UPCASTERS: Mapping[tuple[str, int], Upcaster] = {}


class SchemaTooNewError(ValueError):
    """A payload newer than this code knows: written by a newer node or server."""


def _by_name() -> dict[str, Schema]:
    return {schema.name: schema for schema in SCHEMAS}


def current(name: str) -> int:
    """The version this code writes of schema ``name``."""
    return _by_name()[name].version


def version_of(payload: Mapping[str, Any]) -> int:
    """A payload's version: its ``schema`` field, 1 without one (0.1.0 wrote none)."""
    value = payload.get(VERSION_FIELD, 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def stamp(name: str, payload: dict[str, Any], version: int | None = None) -> dict[str, Any]:
    """``payload`` as written at ``version`` (default: the current one); version 1 is
    left unstamped, as 0.1.0 wrote it."""
    version = current(name) if version is None else version
    if version == 1:
        return {k: v for k, v in payload.items() if k != VERSION_FIELD}
    return {**payload, VERSION_FIELD: version}


def upcast(
    name: str,
    payload: Mapping[str, Any],
    *,
    target: int | None = None,
    upcasters: Mapping[tuple[str, int], Upcaster] = UPCASTERS,
) -> dict[str, Any]:
    """``payload`` of schema ``name`` brought up to ``target`` (default: the current
    version) by the upcasters in turn; without its ``schema`` field at version 1. A
    payload newer than ``target`` is a :class:`SchemaTooNewError`."""
    target = current(name) if target is None else target
    version = version_of(payload)
    if version > target:
        raise SchemaTooNewError(
            f"{name} schema {version} is newer than this version's {target}: "
            "upgrade the servers first (docs/operations.md, Upgrades)"
        )
    out = dict(payload)
    while version < target:
        step = upcasters.get((name, version))
        if step is None:
            raise LookupError(f"no upcaster for {name} from schema {version}")
        out = step(out)
        version += 1
        out[VERSION_FIELD] = version
    return stamp(name, out, target)


def catalogue() -> list[dict[str, Any]]:
    """Every schema with its version and JSON schema (``GET /api/v1/schemas``)."""
    return [
        {
            "name": schema.name,
            "kind": schema.kind,
            "version": schema.version,
            "description": schema.description,
            "json_schema": schema.model.model_json_schema(),
        }
        for schema in SCHEMAS
    ]

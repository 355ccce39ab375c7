"""The API's bodies of ``/api/v1/slices``, and the pure reading of a tenant's slices
from the state store's endpoint values (``endpoints/{slice}/{entry}/{node}:{n}``).

A slice is an app whose endpoints have entries other than ``web`` (one per entry
point and instance), or whose deployment's spec has ``runtime = "slice"`` (it is
known before any instance is ACTIVE). An endpoint exists only while its instance
is ACTIVE, so the endpoints are the ACTIVE instances.

The endpoint values are read as plain JSON objects (``SliceEndpoint.parse``), not
as ``model.cluster.Endpoint``: an entry point's ``schema`` (its ``$describe`` item)
is kept whether or not that model declares it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from aether.model.names import split_cluster_name

__all__ = [
    "MAX_CALL_TIMEOUT",
    "WEB_ENTRY",
    "SliceCallOut",
    "SliceEndpoint",
    "SliceEntryOut",
    "SliceInstanceOut",
    "SliceOut",
    "SliceSummaryOut",
    "call_arguments",
    "slice_detail",
    "slice_summaries",
]

#: an ordinary app's one endpoint
WEB_ENTRY = "web"
#: the longest a call through the API may wait (seconds); the default is 30
MAX_CALL_TIMEOUT = 300.0
DEFAULT_CALL_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    """One endpoint value: an entry point of one ACTIVE instance."""

    app: str  # the cluster name
    entry: str
    node: str
    n: int
    version: int
    url: str
    schema: dict[str, Any] | None

    @classmethod
    def parse(cls, value: bytes) -> SliceEndpoint | None:
        """The endpoint of a stored value; None for one that is not an endpoint."""
        try:
            data = json.loads(value)
            schema = data.get("schema")
            return cls(
                app=str(data["app"]),
                entry=str(data.get("entry") or WEB_ENTRY),
                node=str(data["node"]),
                n=int(data["n"]),
                version=int(data["version"]),
                url=str(data["url"]),
                schema=schema if isinstance(schema, dict) else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


class SliceSummaryOut(BaseModel):
    """One of the tenant's slices, as ``GET /slices`` lists it."""

    name: str
    entries: list[str]
    instances_active: int


class SliceEntryOut(BaseModel):
    name: str
    #: the entry point's ``$describe`` item: ``params`` and ``returns`` (JSON schemas),
    #: ``idempotent``, ``batch``; null until an instance has reported it
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class SliceInstanceOut(BaseModel):
    node: str
    n: int
    version: int
    url: str


class SliceOut(BaseModel):
    """One slice, as ``GET /slices/{slice}`` shows it: entry points and ACTIVE instances."""

    name: str
    entries: list[SliceEntryOut]
    instances: list[SliceInstanceOut]


class SliceCallOut(BaseModel):
    result: Any = None


def _shown(cluster: str, tenant: str) -> str | None:
    """The plain name of tenant ``tenant``'s cluster name ``cluster``; None for another
    tenant's (or a name that is not a cluster name)."""
    app, owner = split_cluster_name(cluster)
    return app if owner == tenant and app else None


def _by_slice(
    endpoints: list[SliceEndpoint], declared: set[str], tenant: str
) -> dict[str, list[SliceEndpoint]]:
    """The tenant's slices by plain name → their endpoints (``web`` ones left out)."""
    found: dict[str, list[SliceEndpoint]] = {}
    for cluster in declared:
        if (name := _shown(cluster, tenant)) is not None:
            found.setdefault(name, [])
    for ep in endpoints:
        name = _shown(ep.app, tenant)
        if name is not None and ep.entry != WEB_ENTRY:
            found.setdefault(name, []).append(ep)
    return found


def _instances(endpoints: list[SliceEndpoint]) -> list[SliceInstanceOut]:
    seen: dict[tuple[str, int], SliceInstanceOut] = {}
    for ep in endpoints:
        seen.setdefault(
            (ep.node, ep.n), SliceInstanceOut(node=ep.node, n=ep.n, version=ep.version, url=ep.url)
        )
    return [seen[k] for k in sorted(seen)]


def slice_summaries(
    endpoints: list[SliceEndpoint], declared: set[str], tenant: str
) -> list[SliceSummaryOut]:
    """Tenant ``tenant``'s (a tenant NAME) slices, by name: ``declared`` are the cluster
    names of apps whose deployment says ``runtime = "slice"``."""
    return [
        SliceSummaryOut(
            name=name,
            entries=sorted({ep.entry for ep in eps}),
            instances_active=len(_instances(eps)),
        )
        for name, eps in sorted(_by_slice(endpoints, declared, tenant).items())
    ]


def slice_detail(
    endpoints: list[SliceEndpoint], declared: set[str], tenant: str, name: str
) -> SliceOut | None:
    """Tenant ``tenant``'s slice ``name``; None when it has none of that name."""
    eps = _by_slice(endpoints, declared, tenant).get(name)
    if eps is None:
        return None
    schemas: dict[str, dict[str, Any] | None] = {}
    for ep in sorted(eps, key=lambda e: (e.entry, -e.version, e.node, e.n)):
        if schemas.get(ep.entry) is None:  # the newest version's that has one
            schemas[ep.entry] = ep.schema
    return SliceOut(
        name=name,
        entries=[SliceEntryOut(name=e, schema=s) for e, s in sorted(schemas.items())],
        instances=_instances(eps),
    )


_CALL_KEYS = frozenset({"args", "kwargs", "timeout"})


def call_arguments(body: Any) -> tuple[list[Any], dict[str, Any], float]:
    """``(args, kwargs, timeout)`` of a ``:call`` body; ``ValueError`` saying what is wrong.

    The body is an object with ``args`` (an array) or ``kwargs`` (an object), or
    neither (no arguments), and an optional ``timeout`` in seconds.
    """
    if not isinstance(body, dict):
        raise ValueError('the body must be a JSON object: {"args": [...]} or {"kwargs": {...}}')
    unknown = sorted(set(body) - _CALL_KEYS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}: use args, kwargs, timeout")
    args = body.get("args", [])
    kwargs = body.get("kwargs", {})
    if not isinstance(args, list):
        raise ValueError("args must be a JSON array (the positional arguments)")
    if not isinstance(kwargs, dict):
        raise ValueError("kwargs must be a JSON object (the keyword arguments)")
    timeout = body.get("timeout", DEFAULT_CALL_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_CALL_TIMEOUT
    ):
        raise ValueError(f"timeout must be a number of seconds in (0, {MAX_CALL_TIMEOUT:g}]")
    return args, kwargs, float(timeout)

"""Telemetry: what a node pushes every second, and what the leader aggregates.

Metrics never pass through the state store: nodes POST a :class:`NodeMetrics`
to ``/api/v1/nodes/{node}/metrics`` and the leader folds the latest of each
node into one :class:`ClusterSample` per second (kept in memory for a sliding
window; roll-ups go to the records database).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from aether.model.versioned import Versioned

__all__ = [
    "AppPoint",
    "AppSample",
    "ClusterSample",
    "EndpointMetrics",
    "EntryFigures",
    "EntryMetrics",
    "EntryPoint",
    "EntrySample",
    "InstanceMetrics",
    "NodeMetrics",
    "NodePoint",
    "NodeSample",
    "PushAnswer",
    "Rollup",
    "TenantSnapshot",
]


#: Counters are int64 wherever they are stored or summed.
_INT64 = 2**63 - 1


class InstanceMetrics(BaseModel):
    """One instance's process tree, as the node saw it in the last interval."""

    model_config = ConfigDict(allow_inf_nan=False)  # figures are finite numbers

    key: str  # instances/{node}/{app}@{version}/{n}
    app: str
    version: int
    n: int
    cpu: float = Field(ge=0.0)  # cores used (0.5 = half a core) over the last interval
    rss_mb: float = Field(ge=0.0)
    restarts: int = Field(
        default=0, ge=0, le=_INT64
    )  # crashes restarted by the node since it started


class EndpointMetrics(BaseModel):
    """What this node's router saw for one app since the previous update."""

    model_config = ConfigDict(allow_inf_nan=False)  # figures are finite numbers

    app: str
    calls: int = Field(ge=0, le=_INT64)  # requests finished in the interval
    errors: int = Field(default=0, ge=0, le=_INT64)  # of which failed (5xx or no upstream)
    total_ms: float = Field(ge=0.0)  # summed duration of those calls
    in_flight: int = Field(default=0, ge=0, le=_INT64)  # requests open at the end of the interval


class EntryMetrics(BaseModel):
    """One slice entry point's figures on this node since the previous update.

    ``source`` says who counted them: ``instance`` (the instance's own ``$stats``:
    every call it served, from a router or a handle; ``url`` is that instance's)
    or ``router`` (this node's router, for the calls it sent, to whichever
    instance; ``by_url``: its calls open per instance url). The leader takes an
    entry's figures from the instances when any reported it, else from the
    routers, so no call is counted twice.
    """

    model_config = ConfigDict(allow_inf_nan=False)  # figures are finite numbers

    slice: str  # the slice's cluster name
    entry: str
    source: Literal["instance", "router"] = "instance"
    url: str | None = None  # the instance's endpoint url (source instance)
    calls: int = Field(default=0, ge=0, le=_INT64)  # calls finished in the interval
    errors: int = Field(default=0, ge=0, le=_INT64)  # of which failed
    duration_s: float = Field(default=0.0, ge=0.0)  # summed duration of those calls
    in_flight: int = Field(default=0, ge=0, le=_INT64)  # calls open at the end of the interval
    # open calls per instance url
    by_url: dict[str, Annotated[int, Field(ge=0, le=_INT64)]] = Field(default_factory=dict)


class NodeMetrics(Versioned):
    """The body of one push: node gauges, per-instance and per-endpoint figures."""

    SCHEMA_NAME: ClassVar[str] = "telemetry"

    model_config = ConfigDict(allow_inf_nan=False)  # figures are finite numbers

    node: str
    ts: float  # the node's clock (seconds); the server also stamps arrival
    seq: int = Field(default=0, ge=0, le=_INT64)  # increases by one per push; gaps show lost pushes
    interval: float = Field(default=1.0, gt=0.0)  # seconds the deltas cover
    cpu: float = Field(ge=0.0, le=1.0)  # whole machine, 0..1
    memory_used_mb: float = Field(ge=0.0)
    memory_total_mb: float = Field(gt=0.0)
    disk_used_mb: float = Field(ge=0.0)
    disk_total_mb: float = Field(gt=0.0)
    net_rx_bytes: int = Field(ge=0, le=_INT64)  # cumulative since boot
    net_tx_bytes: int = Field(ge=0, le=_INT64)
    instances: list[InstanceMetrics] = Field(default_factory=list)
    endpoints: list[EndpointMetrics] = Field(default_factory=list)
    entries: list[EntryMetrics] = Field(default_factory=list)  # slices' entry points


class NodeSample(BaseModel):
    """One node in one aggregated second."""

    node: str
    cpu: float
    memory_fraction: float
    disk_fraction: float
    net_rx_per_s: float
    net_tx_per_s: float
    instances: int
    restarts: int  # summed restart counters of the node's instances
    age: float  # seconds since the node's last push arrived
    stale: bool  # no push for several intervals: figures are the last known


class AppSample(BaseModel):
    """One app in one aggregated second, over all its instances and routers."""

    app: str
    instances: int  # instances reporting figures
    cpu_per_instance: float  # mean cores per instance
    rss_mb_per_instance: float
    calls_per_s: float
    errors_per_s: float
    latency_ms: float  # mean call duration (0 without calls)
    in_flight_per_instance: float
    restarts: int  # summed restart counters


class EntrySample(BaseModel):
    """One slice entry point in one aggregated second, over all its instances and nodes."""

    slice: str
    entry: str
    instances: int  # instances reporting the entry (0: figures from routers only)
    calls_per_s: float
    errors_per_s: float
    mean_ms: float  # mean call duration (0 without calls)
    in_flight: int  # calls open, all instances
    in_flight_per_instance: float  # in_flight / instances (in_flight itself without any)
    by_url: dict[str, int] = Field(default_factory=dict)  # calls open per instance url


class ClusterSample(BaseModel):
    ts: float  # the leader's clock when it aggregated
    nodes: dict[str, NodeSample] = Field(default_factory=dict)
    apps: dict[str, AppSample] = Field(default_factory=dict)
    # slice (cluster name, or as shown to its tenant) -> entry -> figures
    slices: dict[str, dict[str, EntrySample]] = Field(default_factory=dict)


class NodePoint(NodeSample):
    """One node in one aggregated second of the window (``GET /metrics/nodes/{node}``)."""

    ts: float


class AppPoint(AppSample):
    """One app in one aggregated second of the window (``GET /metrics/apps/{app}``)."""

    ts: float


class EntryPoint(EntrySample):
    """One entry point in one aggregated second of the window (``GET /metrics/slices/{slice}``)."""

    ts: float


class EntryFigures(BaseModel):
    """One entry point in the cluster snapshot (see the module docstring)."""

    in_flight: int
    calls_per_s: float
    mean_ms: float
    by_url: dict[str, int] = Field(default_factory=dict)


class TenantSnapshot(BaseModel):
    """One tenant's cluster snapshot: its slices' entry points in the latest second."""

    at: float
    slices: dict[str, dict[str, EntryFigures]] = Field(default_factory=dict)


class PushAnswer(Versioned):
    """The answer to a metrics push (``200``; ``204`` without a body when there is none)."""

    SCHEMA_NAME: ClassVar[str] = "telemetry_reply"

    snapshots: dict[str, TenantSnapshot] = Field(default_factory=dict)


class Rollup(BaseModel):
    """One node's or app's figures over one minute: mean and maximum of each second.

    ``samples`` counts the fresh seconds folded in (a stale node adds none);
    ``latency_ms`` is weighted by calls, so its mean is the mean call duration.
    """

    kind: Literal["node", "app"]
    name: str
    minute: float  # start of the minute, seconds since the epoch (a multiple of 60)
    samples: int
    avg: dict[str, float]
    max: dict[str, float]

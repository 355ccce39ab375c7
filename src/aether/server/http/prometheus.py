"""Prometheus metrics of one server process (served by :mod:`aether.server.api.prometheus`).

Each ``ServerMetrics`` owns its own ``CollectorRegistry`` (never the global
default), so several servers in one process (tests) keep separate numbers.
``GET /metrics`` serves them in the text format. Without a token (like the probes)
it shows only cluster-level figures: no series labelled with a node or an app, so
an anonymous scraper learns no names. A scrape with a valid token (any role) adds
the labelled series its tenant may see: its own apps', and the nodes' for tokens
of the default tenant (which runs the cluster); a wrong token is a 401.

Series (no label has more than a handful of values):

``artifact_upload_bytes_total{kind}``       counter: request-body bytes received by
                                            uploads; ``kind`` is ``artifact`` (whole
                                            archives) or ``blob`` (per-file contents)
``artifact_upload_duration_seconds{kind}``  histogram: time an upload held its slot;
                                            ``kind`` adds ``assemble`` (artifact
                                            assembled from blobs)
``artifact_uploads_in_progress``            gauge: uploads holding a slot now (never
                                            above ``AETHER_MAX_CONCURRENT_UPLOADS``)
``artifact_uploads_waiting``                gauge: uploads queued for a slot
``artifacts_total``                         gauge: artifacts stored in the registry,
                                            recounted at a scrape at most once a minute
                                            and after this server stored or collected
                                            artifacts (listing an S3 bucket is not
                                            free); a gauge despite the suffix
``deployments_created_total``               counter: deployments and rollbacks created
``deployments_succeeded_total``             counter: deployments that became active
``deployments_failed_total``                counter: deployments marked failed
``telemetry_updates_total``                 counter: node metrics pushes ingested
``rate_limited_requests_total{tenant}``     counter: requests refused 429 ``rate_limited``
                                            (audited once per tenant a minute, not each)
``telemetry_ingest_duration_seconds``       histogram: time to read, validate and ingest one
``node_cpu_ratio{node}``                    gauge: machine CPU 0..1 in the latest sample
``node_memory_used_ratio{node}``            gauge: memory used / total
``node_disk_used_ratio{node}``              gauge: data-dir disk used / total
``node_telemetry_stale{node}``              gauge: 1 when the node stopped pushing
``app_instances{app}``                      gauge: instances reporting figures
``app_calls_per_second{app}``               gauge: calls through all routers
``app_latency_seconds{app}``                gauge: mean call duration in the latest second
``app_in_flight_calls{app}``                gauge: open calls per instance
``aether_slice_calls_total{slice,entry}``   counter: calls a slice's entry point finished
                                            (from every push this server ingested)
``aether_slice_errors_total{slice,entry}``  counter: of which failed
``aether_slice_call_seconds_total{slice,entry}`` counter: their summed duration
``aether_slice_in_flight{slice,entry}``     gauge: calls open in the latest sample
``cluster_nodes``                           gauge: nodes in the latest sample
``cluster_nodes_stale``                     gauge: of which stopped pushing
``cluster_app_instances``                   gauge: instances reporting figures, all apps
``cluster_calls_per_second``                gauge: calls through all routers, all apps
``agent_runs_started_total{tenant,agent}``  counter: runs started on this server
``agent_runs_finished_total{tenant,agent,status}`` counter: runs that ended (completed,
                                            failed, cancelled, expired)
``agent_step_duration_seconds{tenant,agent,kind}`` histogram: a step's time (``model``:
                                            the model call; ``tool``: decision to result)
``agent_tokens_total{tenant,agent,direction}`` counter: model tokens (``in``, ``out``)
``agent_cost_total{tenant,agent}``          counter: model cost, in the models' currency

A scrape sees the ``tenant``-labelled series of its own tenant; the default
tenant's (the cluster's) sees every tenant's. The node and app gauges come from
the leader's latest telemetry sample (other servers show none); node/app labels
grow with the cluster, one series each. A ``slice`` label is a cluster name, like
``app``, and is shown to the same scrapes (its tenant's).

Counters are per process: the deployment outcome counters move on the server
that was leader at the time, so sum them over all servers.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from aether.artifacts import ArtifactBackend
    from aether.model.telemetry import ClusterSample

__all__ = ["AgentRunMetrics", "ServerMetrics", "UploadKind", "Visible"]

UploadKind = Literal["artifact", "blob", "assemble"]
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


_STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class AgentRunMetrics:
    """Agents' runs, steps, tokens and cost (per tenant and agent), for ``/metrics`` and,
    over the last seconds, for ``GET /api/v1/agents/{id}/metrics``."""

    window = 60.0  # seconds of steps kept for the per-agent figures

    def __init__(self, r: CollectorRegistry) -> None:
        labels = ["tenant", "agent"]
        self.runs_started = Counter(
            "agent_runs_started_total", "Agent runs started.", labels, registry=r
        )
        self.runs_finished = Counter(
            "agent_runs_finished_total", "Agent runs ended.", [*labels, "status"], registry=r
        )
        self.step_duration = Histogram(
            "agent_step_duration_seconds",
            "Seconds an agent's step took (model call, or tool call).",
            [*labels, "kind"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "agent_tokens_total", "Model tokens used by agents.", [*labels, "direction"], registry=r
        )
        self.cost = Counter("agent_cost_total", "Model cost of agents' runs.", labels, registry=r)
        # (monotonic time, tenant, agent, event, seconds, tokens, cost)
        self._recent: deque[tuple[float, str, str, str, float, int, float]] = deque()

    def _keep(
        self, tenant: str, agent: str, event: str, seconds: float, tokens: int, cost: float
    ) -> None:
        at = time.monotonic()
        self._recent.append((at, tenant, agent, event, seconds, tokens, cost))
        while self._recent and self._recent[0][0] < at - self.window:
            self._recent.popleft()

    def started(self, tenant: str, agent: str) -> None:
        self.runs_started.labels(tenant, agent).inc()
        self._keep(tenant, agent, "run", 0.0, 0, 0.0)

    def finished(self, tenant: str, agent: str, status: str) -> None:
        self.runs_finished.labels(tenant, agent, status).inc()

    def step(
        self,
        tenant: str,
        agent: str,
        kind: str,
        seconds: float,
        tokens_in: int,
        tokens_out: int,
        cost: float,
    ) -> None:
        self.step_duration.labels(tenant, agent, kind).observe(seconds)
        if tokens_in:
            self.tokens.labels(tenant, agent, "in").inc(tokens_in)
        if tokens_out:
            self.tokens.labels(tenant, agent, "out").inc(tokens_out)
        if cost:
            self.cost.labels(tenant, agent).inc(cost)
        self._keep(tenant, agent, kind, seconds, tokens_in + tokens_out, cost)

    def agents_of(self, tenant: str, seconds: float = 1.0) -> list[str]:
        """The tenant's agents that ran a step in the last ``seconds`` here."""
        since = time.monotonic() - seconds
        return sorted({e[2] for e in self._recent if e[0] >= since and e[1] == tenant})

    def recent(self, tenant: str, agent: str, seconds: float = 10.0) -> dict[str, float]:
        """Runs/s, steps/s, step latency (p50, p95 in ms), tokens/s and cost/s over the
        last ``seconds`` on this server."""
        since = time.monotonic() - seconds
        mine = [e for e in self._recent if e[0] >= since and e[1] == tenant and e[2] == agent]
        steps = sorted(e[4] for e in mine if e[3] != "run")

        def pct(q: float) -> float:
            return (
                round(steps[min(len(steps) - 1, int(q * len(steps)))] * 1000, 3) if steps else 0.0
            )

        return {
            "window_seconds": seconds,
            "runs_per_second": sum(1 for e in mine if e[3] == "run") / seconds,
            "steps_per_second": len(steps) / seconds,
            "step_latency_p50_ms": pct(0.5),
            "step_latency_p95_ms": pct(0.95),
            "tokens_per_second": sum(e[5] for e in mine) / seconds,
            "cost_per_second": sum(e[6] for e in mine) / seconds,
        }


class SliceSeries(Collector):
    """The slices' per entry point series, set at each scrape from the hub's totals
    (calls, errors, seconds) and the latest sample's open calls."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], tuple[float, float, float]] = {}
        self.in_flight: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[Metric]:
        labels = ["slice", "entry"]
        calls = CounterMetricFamily(
            "aether_slice_calls", "Calls a slice's entry point finished.", labels=labels
        )
        errors = CounterMetricFamily(
            "aether_slice_errors", "Calls of a slice's entry point that failed.", labels=labels
        )
        seconds = CounterMetricFamily(
            "aether_slice_call_seconds",
            "Summed duration of a slice's entry point's calls.",
            labels=labels,
        )
        for (slice_, entry), (k, e, d) in sorted(self.totals.items()):
            calls.add_metric([slice_, entry], k)
            errors.add_metric([slice_, entry], e)
            seconds.add_metric([slice_, entry], d)
        open_calls = GaugeMetricFamily(
            "aether_slice_in_flight", "Calls open on a slice's entry point.", labels=labels
        )
        for (slice_, entry), n in sorted(self.in_flight.items()):
            open_calls.add_metric([slice_, entry], n)
        yield from (calls, errors, seconds, open_calls)


class ServerMetrics:
    #: Seconds a count of ``artifacts_total`` is reused by later scrapes.
    artifacts_refresh_seconds = 60.0

    def __init__(self) -> None:
        self._artifacts_counted: float | None = None  # monotonic time of the last count
        self._artifacts_generation = 0  # bumped by artifacts_changed()
        self.registry = CollectorRegistry()
        r = self.registry
        self.upload_bytes = Counter(
            "artifact_upload_bytes_total",
            "Request-body bytes received by artifact and blob uploads.",
            ["kind"],
            registry=r,
        )
        self.upload_duration = Histogram(
            "artifact_upload_duration_seconds",
            "Seconds an upload (or an assembly from blobs) held its upload slot.",
            ["kind"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.uploads_in_progress = Gauge(
            "artifact_uploads_in_progress", "Uploads holding an upload slot now.", registry=r
        )
        self.uploads_waiting = Gauge(
            "artifact_uploads_waiting",
            "Uploads waiting for a slot (AETHER_MAX_CONCURRENT_UPLOADS reached).",
            registry=r,
        )
        self.artifacts = Gauge(
            "artifacts_total",
            "Artifacts stored in the registry (a gauge, recounted at each scrape).",
            registry=r,
        )
        self.deployments_created = Counter(
            "deployments_created_total", "Deployments (and rollbacks) created.", registry=r
        )
        self.deployments_succeeded = Counter(
            "deployments_succeeded_total",
            "Deployments whose instances all became ACTIVE.",
            registry=r,
        )
        self.deployments_failed = Counter(
            "deployments_failed_total", "Deployments marked failed.", registry=r
        )
        self.telemetry_updates = Counter(
            "telemetry_updates", "Node metrics pushes ingested.", registry=r
        )
        self.rate_limited = Counter(
            "rate_limited_requests_total",
            "Requests refused 429 rate_limited, by tenant.",
            ["tenant"],
            registry=r,
        )
        self.telemetry_ingest = Histogram(
            "telemetry_ingest_duration_seconds",
            "Seconds to read, validate and ingest one node metrics push.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.node_cpu = Gauge("node_cpu_ratio", "Machine CPU, 0..1.", ["node"], registry=r)
        self.node_memory = Gauge(
            "node_memory_used_ratio", "Memory used / total.", ["node"], registry=r
        )
        self.node_disk = Gauge(
            "node_disk_used_ratio", "Data-dir disk used / total.", ["node"], registry=r
        )
        self.node_stale = Gauge(
            "node_telemetry_stale", "1 when the node stopped pushing metrics.", ["node"], registry=r
        )
        self.app_instances = Gauge(
            "app_instances", "Instances reporting telemetry.", ["app"], registry=r
        )
        self.app_calls = Gauge(
            "app_calls_per_second", "Calls per second through all routers.", ["app"], registry=r
        )
        self.app_latency = Gauge(
            "app_latency_seconds", "Mean call duration in the latest second.", ["app"], registry=r
        )
        self.app_in_flight = Gauge(
            "app_in_flight_calls", "Open calls per instance.", ["app"], registry=r
        )
        self.cluster_nodes = Gauge(
            "cluster_nodes", "Nodes in the latest telemetry sample.", registry=r
        )
        self.cluster_nodes_stale = Gauge(
            "cluster_nodes_stale", "Nodes that stopped pushing metrics.", registry=r
        )
        self.cluster_app_instances = Gauge(
            "cluster_app_instances", "Instances reporting telemetry, all apps.", registry=r
        )
        self.cluster_calls = Gauge(
            "cluster_calls_per_second", "Calls per second through all routers.", registry=r
        )
        self.slices = SliceSeries()
        r.register(self.slices)
        self.agents = AgentRunMetrics(r)
        for kind in ("artifact", "blob"):  # present at 0 from the start
            self.upload_bytes.labels(kind)
        for kind in ("artifact", "blob", "assemble"):
            self.upload_duration.labels(kind)

    async def render(
        self,
        view: Visible | None = None,
        *,
        registry: ArtifactBackend | None = None,
        latest: ClusterSample | None = None,
        entry_totals: dict[tuple[str, str], tuple[float, float, float]] | None = None,
    ) -> bytes:
        """The exposition text, with the scrape-time gauges refreshed first (the artifact
        count from ``registry``, the node and app gauges from ``latest``, the slices'
        counters from ``entry_totals``); only the node-, app- and slice-labelled series
        ``view`` allows (none without one)."""
        if registry is not None:
            await self._count_artifacts(registry)
            self.telemetry(latest)
            self.slices.totals = dict(entry_totals or {})
        return generate_latest(_Scoped(self.registry, view or Visible()))

    def artifacts_changed(self) -> None:
        """Artifacts were stored or deleted here: the next scrape counts them again."""
        self._artifacts_generation += 1
        self._artifacts_counted = None

    async def _count_artifacts(self, registry: ArtifactBackend) -> None:
        started = time.monotonic()
        counted = self._artifacts_counted
        if counted is not None and started - counted < self.artifacts_refresh_seconds:
            return
        generation = self._artifacts_generation
        self.artifacts.set(len(await registry.list_digests()))
        if generation == self._artifacts_generation:  # else a change raced the listing
            self._artifacts_counted = started

    def telemetry(self, sample: ClusterSample | None) -> None:
        """Set the node and app gauges from a telemetry sample (nodes gone drop out)."""
        gauges = [self.node_cpu, self.node_memory, self.node_disk, self.node_stale]
        gauges += [self.app_instances, self.app_calls, self.app_latency, self.app_in_flight]
        for gauge in gauges:
            gauge.clear()
        self.slices.in_flight = (
            {}
            if sample is None
            else {
                (name, entry): e.in_flight
                for name, entries in sample.slices.items()
                for entry, e in entries.items()
            }
        )
        if sample is None:
            for aggregate in (self.cluster_nodes, self.cluster_nodes_stale, self.cluster_calls):
                aggregate.set(0)
            self.cluster_app_instances.set(0)
            return
        self.cluster_nodes.set(len(sample.nodes))
        self.cluster_nodes_stale.set(sum(1 for n in sample.nodes.values() if n.stale))
        self.cluster_app_instances.set(sum(a.instances for a in sample.apps.values()))
        self.cluster_calls.set(sum(a.calls_per_s for a in sample.apps.values()))
        for name, n in sample.nodes.items():
            self.node_cpu.labels(name).set(n.cpu)
            self.node_memory.labels(name).set(n.memory_fraction)
            self.node_disk.labels(name).set(n.disk_fraction)
            self.node_stale.labels(name).set(1.0 if n.stale else 0.0)
        for name, a in sample.apps.items():
            self.app_instances.labels(name).set(a.instances)
            self.app_calls.labels(name).set(a.calls_per_s)
            self.app_latency.labels(name).set(a.latency_ms / 1000.0)
            self.app_in_flight.labels(name).set(a.in_flight_per_instance)


class Visible:
    """Which labelled series a scrape may see: the nodes' (and every tenant's) or not,
    which apps', and its own tenant's."""

    def __init__(
        self, nodes: bool = False, apps: frozenset[str] = frozenset(), tenant: str | None = None
    ) -> None:
        self.nodes = nodes
        self.apps = apps
        self.tenant = tenant

    def allows(self, labels: dict[str, str]) -> bool:
        if "node" in labels and not self.nodes:
            return False
        if "tenant" in labels and not (self.nodes or labels["tenant"] == self.tenant):
            return False
        if "slice" in labels and labels["slice"] not in self.apps:
            return False
        return "app" not in labels or labels["app"] in self.apps


class _Scoped:
    """A registry seen through a ``Visible``: what ``generate_latest`` reads."""

    def __init__(self, registry: CollectorRegistry, view: Visible) -> None:
        self._registry = registry
        self._view = view

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            samples = [s for s in family.samples if self._view.allows(s.labels)]
            if len(samples) != len(family.samples):
                kept = Metric(family.name, family.documentation, family.type, family.unit)
                kept.samples = samples
                family = kept
            yield family

"""Telemetry through a real server: push → ingest → the leader's samples → API, SSE, Prometheus.

A server of its own, so the hub holds only what these tests pushed. Nodes are
simulated through the real push API (and once by the node's real collector and
pusher); roll-ups go to the server's real records database.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aether.client import ApiClient
from aether.core.telemetry import minute_of
from aether.errors import NotFoundError, UnauthorizedError
from aether.model.api import RegisterIn
from aether.model.cluster import NodeCapabilities
from aether.model.names import cluster_name
from aether.model.telemetry import EndpointMetrics, InstanceMetrics, NodeMetrics
from aether.node.telemetry import TelemetryCollector, TelemetryPusher
from aether.server.api.telemetry import MAX_PUSH_BYTES
from aether.server.services.telemetry import TelemetryHub
from aether.store.records import DEFAULT_TENANT
from tests.support.api import assert_envelope, bearer, unique
from tests.support.server import RunningServer, running_server
from tests.support.waiting import eventually

T = TypeVar("T")


@pytest.fixture(scope="module")
def hubbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-telemetry")) as running:
        yield running


@pytest.fixture
async def http(hubbed: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hubbed.base_url, timeout=10.0) as client:
        yield client


@pytest.fixture
def node(hubbed: RunningServer) -> str:
    """This test's node: ``node_api`` and ``join`` carry its own credential."""
    return unique("node")


@pytest.fixture
def join(hubbed: RunningServer, node: str) -> dict[str, str]:
    return bearer(hubbed.node_token(node))


@pytest.fixture
async def node_api(hubbed: RunningServer, node: str) -> AsyncIterator[ApiClient]:
    async with ApiClient(hubbed.base_url, hubbed.node_token(node)) as client:
        yield client


def update(
    node: str,
    *,
    cpu: float = 0.25,
    app: str | None = None,
    calls: int = 0,
    seq: int = 0,
    rx: int = 1000,
) -> NodeMetrics:
    instances, endpoints = [], []
    if app is not None:
        instances = [
            InstanceMetrics(
                key=f"instances/{node}/{app}@1/{n}", app=app, version=1, n=n, cpu=0.5, rss_mb=64
            )
            for n in range(2)
        ]
        endpoints = [EndpointMetrics(app=app, calls=calls, total_ms=calls * 4.0, in_flight=1)]
    return NodeMetrics(
        node=node,
        ts=time.time(),
        seq=seq,
        cpu=cpu,
        memory_used_mb=1024,
        memory_total_mb=4096,
        disk_used_mb=10,
        disk_total_mb=100,
        net_rx_bytes=rx,
        net_tx_bytes=rx // 2,
        instances=instances,
        endpoints=endpoints,
    )


def own_app(server: RunningServer, tenant: str = DEFAULT_TENANT) -> str:
    """A new app in ``tenant``'s records (apps are what tenants may read figures of)."""
    name = unique("tapp")

    async def create() -> None:
        row = await server.ctx.records.ensure_tenant(tenant)
        await server.ctx.records.get_or_create_app(row.id, name)

    server.run(create())
    return name


async def test_a_push_is_kept_in_memory(
    hubbed: RunningServer, node_api: ApiClient, node: str
) -> None:
    pushed = update(node, cpu=0.75)
    await node_api.push_metrics(pushed)
    hub = hubbed.ctx.telemetry
    assert hub.node_update(node) == pushed
    arrivals = hub.node_arrivals(node)
    assert len(arrivals) == 1 and abs(arrivals[0] - time.time()) < 60
    await node_api.push_metrics(update(node, seq=1))
    assert len(hub.node_arrivals(node)) == 2
    assert hub.node_arrivals(unique("never")) == []


def _body(node: str, **changes: Any) -> dict[str, Any]:
    body = update(node).model_dump(mode="json")
    body.update(changes)
    return body


async def test_bad_pushes_get_the_envelope_and_change_nothing(
    hubbed: RunningServer, http: httpx.AsyncClient, node: str, join: dict[str, str]
) -> None:
    url = f"/api/v1/nodes/{node}/metrics"

    wrong = await http.post(url, json=_body(unique("other")), headers=join)
    assert node in assert_envelope(wrong, 400, "bad_request")["message"]
    negative = await http.post(url, json=_body(node, cpu=-0.5), headers=join)
    assert "cpu" in assert_envelope(negative, 400, "bad_request")["message"]
    above_one = await http.post(url, json=_body(node, cpu=1.5), headers=join)
    assert "cpu" in assert_envelope(above_one, 400, "bad_request")["message"]
    bad_instance = _body(node)
    bad_instance["instances"] = [
        {"key": "k", "app": "a", "version": 1, "n": 0, "cpu": 0.1, "rss_mb": -3}
    ]
    rss = await http.post(url, json=bad_instance, headers=join)
    assert "rss_mb" in assert_envelope(rss, 400, "bad_request")["message"]
    nan = await http.post(
        url,
        content=json.dumps(_body(node, memory_used_mb=float("nan"))),  # a NaN literal
        headers={**join, "Content-Type": "application/json"},
    )
    assert "memory_used_mb" in assert_envelope(nan, 400, "bad_request")["message"]
    garbage = await http.post(url, content=b"{not json", headers=join)
    assert_envelope(garbage, 400, "bad_request")
    missing = await http.post(url, json={"node": node}, headers=join)
    assert "memory_total_mb" in assert_envelope(missing, 400, "bad_request")["message"]
    huge = await http.post(url, content=b" " * (MAX_PUSH_BYTES + 1), headers=join)
    assert_envelope(huge, 413, "payload_too_large")

    assert_envelope(await http.post(url, json=_body(node)), 401, "unauthorized")
    viewer = bearer(hubbed.token("viewer"))
    assert_envelope(await http.post(url, json=_body(node), headers=viewer), 403, "forbidden")

    assert hubbed.ctx.telemetry.node_update(node) is None


async def test_the_leader_folds_pushes_into_a_sample_each_second(
    hubbed: RunningServer, node_api: ApiClient, node: str
) -> None:
    app = own_app(hubbed)
    async with (
        ApiClient(hubbed.base_url, hubbed.token("viewer")) as viewer,
        ApiClient(hubbed.base_url, hubbed.new_tenant()) as stranger,
    ):

        async def seen() -> Any:
            await node_api.push_metrics(update(node, cpu=0.5, app=app, calls=20))
            sample = await viewer.metrics_latest()
            return sample if sample and node in sample.nodes and app in sample.apps else None

        sample = await eventually(seen, "the node and its app in the latest sample")
        n = sample.nodes[node]
        assert (n.cpu, n.memory_fraction, n.disk_fraction, n.instances) == (0.5, 0.25, 0.1, 2)
        assert not n.stale
        a = sample.apps[app]
        assert (a.instances, a.cpu_per_instance, a.rss_mb_per_instance) == (2, 0.5, 64)
        assert (a.calls_per_s, a.latency_ms, a.in_flight_per_instance) == (20, 4, 0.5)

        # another tenant sees the nodes but not this tenant's app
        theirs = await stranger.metrics_latest()
        assert theirs is not None and node in theirs.nodes and app not in theirs.apps


async def test_history_of_a_node_and_of_an_app(
    hubbed: RunningServer, node_api: ApiClient, node: str
) -> None:
    app = own_app(hubbed)
    async with (
        ApiClient(hubbed.base_url, hubbed.token("viewer")) as viewer,
        ApiClient(hubbed.base_url, hubbed.new_tenant()) as stranger,
    ):
        pushes = 0

        async def two_seconds() -> Any:
            nonlocal pushes
            await node_api.push_metrics(update(node, app=app, calls=5, seq=pushes))
            pushes += 1
            points = await viewer.metrics_node(node, seconds=60)
            return points if len(points) >= 2 else None

        points = await eventually(two_seconds, "two seconds of the node in the window")
        assert [p.ts for p in points] == sorted(p.ts for p in points)
        assert all(p.node == node and p.cpu == 0.25 for p in points)
        app_points = await viewer.metrics_app(app, seconds=60)
        assert app_points and all(p.app == app and p.instances == 2 for p in app_points)
        assert len(await viewer.metrics_node(node, seconds=0.001)) == 1  # just the newest

        with pytest.raises(NotFoundError):
            await viewer.metrics_node(unique("unknown-node"))
        with pytest.raises(NotFoundError):
            await stranger.metrics_app(app)  # not theirs


async def test_seconds_must_be_positive(hubbed: RunningServer, http: httpx.AsyncClient) -> None:
    response = await http.get(
        "/api/v1/metrics/nodes/x", params={"seconds": -1}, headers=bearer(hubbed.admin_token)
    )
    assert_envelope(response, 400, "bad_request")


async def test_the_stream_sends_samples_and_ends_when_the_client_leaves(
    hubbed: RunningServer, node_api: ApiClient, node: str
) -> None:
    hub = hubbed.ctx.telemetry
    await node_api.push_metrics(update(node))
    async with ApiClient(hubbed.base_url, hubbed.token("viewer")) as viewer:
        received = []
        async with asyncio.timeout(15):
            async for sample in viewer.metrics_stream():
                received.append(sample)
                await node_api.push_metrics(update(node, seq=len(received)))
                if len(received) == 3:
                    break
        assert [s.ts for s in received] == sorted({s.ts for s in received})
        assert node in received[-1].nodes

    async def closed() -> bool:
        return hub.streams == 0

    await eventually(closed, "the server to end the stream")


async def test_the_stream_is_plain_server_sent_events(
    hubbed: RunningServer, http: httpx.AsyncClient
) -> None:
    headers = bearer(hubbed.token("viewer"))
    async with (
        asyncio.timeout(15),
        http.stream("GET", "/api/v1/metrics/stream", headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines: list[str] = []
        async for line in response.aiter_lines():
            lines.append(line)
            if line.startswith("data:"):
                break
    assert lines[0] == "retry: 1000"
    assert "event: sample" in lines
    assert lines[-1].startswith('data: {"ts":')


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_prometheus_shows_the_same_figures(
    hubbed: RunningServer, http: httpx.AsyncClient, node_api: ApiClient, node: str
) -> None:
    app = own_app(hubbed)

    async def exported() -> Any:
        await node_api.push_metrics(update(node, cpu=0.125, app=app, calls=8))
        text = (await http.get("/metrics", headers=bearer(hubbed.admin_token))).text
        series = scrape(text)
        return series if ("node_cpu_ratio", (("node", node),)) in series else None

    series = await eventually(exported, "the node's gauges on /metrics")
    assert series[("node_cpu_ratio", (("node", node),))] == 0.125
    assert series[("node_memory_used_ratio", (("node", node),))] == 0.25
    assert series[("node_disk_used_ratio", (("node", node),))] == 0.1
    assert series[("node_telemetry_stale", (("node", node),))] == 0
    assert series[("app_instances", (("app", app),))] == 2
    assert series[("app_calls_per_second", (("app", app),))] == 8
    assert series[("app_latency_seconds", (("app", app),))] == 0.004
    assert series[("app_in_flight_calls", (("app", app),))] == 0.5
    assert series[("telemetry_updates_total", ())] >= 1
    assert series[("telemetry_ingest_duration_seconds_count", ())] >= 1


async def test_rollups_are_written_each_minute_and_expire(
    hubbed: RunningServer, http: httpx.AsyncClient
) -> None:
    """A hub of its own on the server's records, driven through synthetic seconds."""
    node, app = unique("node"), own_app(hubbed)
    t0 = minute_of(time.time()) - 86400.0  # a day ago: inside the server's own retention
    hub = TelemetryHub(hubbed.ctx.records, retention_days=1.0)

    async def first_minute() -> None:
        for second in range(3):
            now = t0 + second
            pushed = update(node, cpu=0.2 * (second + 1), app=app, calls=10 * (second + 1))
            hub.ingest(pushed.model_copy(update={"ts": now}), received_at=now)
            await hub.tick(now)
        await hub.tick(t0 + 60)  # the next minute closes the first
        await hub.settle()

    async def a_day_later() -> None:
        await hub.tick(t0 + 86400 + 120)  # closes minute t0 + 60, then applies the retention
        await hub.settle()

    hubbed.run(first_minute())
    assert hub.rollups_written == 2  # one for the node, one for the app
    async with ApiClient(hubbed.base_url, hubbed.token("viewer")) as viewer:
        (node_rollup,) = await viewer.metrics_rollups(node=node, since=t0 - 1)
        assert (node_rollup.kind, node_rollup.minute, node_rollup.samples) == ("node", t0, 3)
        assert node_rollup.avg["cpu"] == pytest.approx(0.4)
        assert node_rollup.max["cpu"] == pytest.approx(0.6)
        assert node_rollup.avg["memory_fraction"] == pytest.approx(0.25)
        (app_rollup,) = await viewer.metrics_rollups(app=app, since=t0 - 1)
        assert app_rollup.avg["calls_per_s"] == pytest.approx(20)
        assert app_rollup.max["calls_per_s"] == pytest.approx(30)
        assert app_rollup.avg["latency_ms"] == pytest.approx(4)
        assert app_rollup.max["instances"] == 2
        assert await viewer.metrics_rollups(node=node, since=t0 + 1) == []

        hubbed.run(a_day_later())
        assert hub.rollups_deleted >= 2
        assert await viewer.metrics_rollups(node=node, since=t0 - 1) == []
        assert await viewer.metrics_rollups(app=app, since=t0 - 1) == []

    for params in ({}, {"node": node, "app": app}):
        response = await http.get(
            "/api/v1/metrics/rollups", params=params, headers=bearer(hubbed.admin_token)
        )
        assert_envelope(response, 400, "bad_request")
    async with ApiClient(hubbed.base_url, hubbed.new_tenant()) as stranger:
        with pytest.raises(NotFoundError):
            await stranger.metrics_rollups(app=app)


async def test_a_revoked_token_is_refused_at_once_despite_the_cache(
    hubbed: RunningServer, http: httpx.AsyncClient
) -> None:
    admin = bearer(hubbed.admin_token)
    node = unique("node")
    async with ApiClient(hubbed.base_url, hubbed.node_token(node)) as node_client:
        await node_client.push_metrics(update(node))  # verified, now cached
        await node_client.push_metrics(update(node, seq=1))
        revoked = await http.post(f"/api/v1/nodes/{node}/revoke", headers=admin)
        assert revoked.status_code == 200
        with pytest.raises(UnauthorizedError):
            await node_client.push_metrics(update(node, seq=2))


async def test_the_node_pusher_sends_real_figures(
    hubbed: RunningServer, node_api: ApiClient, node: str, tmp_path: Path
) -> None:
    registration = await node_api.register(
        RegisterIn(
            id=node,
            capabilities=NodeCapabilities(cpus=2, memory_mb=1024, drivers=["process"]),
            router_url="http://127.0.0.1:9",
        )
    )
    pusher = TelemetryPusher(
        node_api, TelemetryCollector(node, tmp_path), None, {}, lambda: registration
    )
    first = await pusher.push_once()
    second = await pusher.push_once()
    assert (pusher.pushed, pusher.failed) == (2, 0)
    assert (first.seq, second.seq) == (0, 1)
    kept = hubbed.ctx.telemetry.node_update(node)
    assert kept is not None and kept.seq == 1 and kept.memory_total_mb > 0

    # a server that cannot be reached costs a debug line, nothing else
    async with ApiClient("http://127.0.0.1:9", hubbed.join_token, timeout=1) as away:
        lost = TelemetryPusher(
            away, TelemetryCollector(node, tmp_path), None, {}, lambda: registration
        )
        await lost.push_once()
        assert (lost.pushed, lost.failed) == (0, 1)


async def test_the_fast_path_answers_like_the_route(
    hubbed: RunningServer,
    http: httpx.AsyncClient,
    node_api: ApiClient,
    node: str,
    join: dict[str, str],
) -> None:
    """Pushes with a cached token skip FastAPI; everything else ends where the route would."""
    await node_api.push_metrics(update(node))  # the node's credential is verified and cached
    url = f"/api/v1/nodes/{node}/metrics"
    lookups, fast_pushes = hubbed.ctx.tokens.lookups, hubbed.ctx.telemetry.fast_pushes

    fast = await http.post(
        url,
        content=update(node, seq=1).model_dump_json(),
        headers={**join, "X-Request-Id": "trace-me", "Content-Type": "application/json"},
    )
    assert (fast.status_code, fast.content, fast.headers["x-trace-id"]) == (204, b"", "trace-me")
    kept = hubbed.ctx.telemetry.node_update(node)
    assert kept is not None and kept.seq == 1
    assert hubbed.ctx.tokens.lookups == lookups  # no database lookup
    assert hubbed.ctx.telemetry.fast_pushes == fast_pushes + 1

    # a bad body with a cached token: the route reads the same body and explains
    bad = await http.post(url, json=_body(node, disk_total_mb=0), headers=join)
    assert "disk_total_mb" in assert_envelope(bad, 400, "bad_request")["message"]

    # a streamed body above the limit: the route refuses it, having read the rest
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b" " * (MAX_PUSH_BYTES // 4)

    huge = await http.post(url, content=chunks(), headers=join)
    assert_envelope(huge, 413, "payload_too_large")

    # an Idempotency-Key goes through the idempotency middleware and the route
    keyed = await http.post(
        url, json=_body(node), headers={**join, "Idempotency-Key": unique("key")}
    )
    assert keyed.status_code == 204

    # a namespace that is not the token's: the route forbids it
    other = await http.post(
        url, json=_body(node), headers={**join, "X-Aether-Namespace": unique("elsewhere")}
    )
    assert_envelope(other, 403, "forbidden")
    assert hubbed.ctx.telemetry.fast_pushes == fast_pushes + 1  # none of those took it


async def test_simultaneous_first_pushes_share_one_token_lookup(
    hubbed: RunningServer, http: httpx.AsyncClient
) -> None:
    node = unique("node")
    token = hubbed.node_token(node)  # a credential no request has used yet
    lookups = hubbed.ctx.tokens.lookups
    responses = await asyncio.gather(
        *(
            http.post(
                f"/api/v1/nodes/{node}/metrics",
                content=update(node, seq=seq).model_dump_json(),
                headers={**bearer(token), "Content-Type": "application/json"},
            )
            for seq in range(20)
        )
    )
    assert [r.status_code for r in responses] == [204] * 20
    assert hubbed.ctx.tokens.lookups == lookups + 1


async def test_prometheus_names_nothing_to_anonymous_scrapes_and_only_own_apps_to_tenants(
    hubbed: RunningServer, http: httpx.AsyncClient, node: str, node_api: ApiClient
) -> None:
    node2, mine = unique("node"), own_app(hubbed)
    other_tenant = unique("tenant")
    theirs = own_app(hubbed, other_tenant)
    theirs_in_cluster = cluster_name(theirs, other_tenant)  # what nodes report it by

    async with ApiClient(hubbed.base_url, hubbed.node_token(node2)) as node2_api:

        async def both_apps() -> Any:
            await node_api.push_metrics(update(node, app=mine, calls=3))
            await node2_api.push_metrics(update(node2, app=theirs_in_cluster, calls=5))
            sample = hubbed.ctx.telemetry.latest()
            return sample if sample and {mine, theirs_in_cluster} <= set(sample.apps) else None

        await eventually(both_apps, "two apps' figures")
    anonymous = (await http.get("/metrics")).text
    for name in (node, mine, theirs):
        assert name not in anonymous, f"an anonymous scrape names {name}"
    assert not [k for k in scrape(anonymous) if {"node", "app"} & {n for n, _ in k[1]}]
    assert scrape(anonymous)[("cluster_nodes", ())] >= 1

    tenant_token = hubbed.mint("viewer", other_tenant)
    as_tenant = (await http.get("/metrics", headers=bearer(tenant_token))).text
    assert theirs in as_tenant and mine not in as_tenant and node not in as_tenant
    as_admin = (await http.get("/metrics", headers=bearer(hubbed.admin_token))).text
    assert mine in as_admin and node in as_admin and theirs not in as_admin


async def test_two_tenants_apps_of_one_name_each_read_only_their_own_figures(
    hubbed: RunningServer, http: httpx.AsyncClient, node: str, node_api: ApiClient
) -> None:
    """The default tenant and tenant T both have app X; nodes report T's as ``X.T``.
    Each reads its own X's figures, by the name X, and T's scrape names only ``X.T``."""
    tenant = unique("tenant")
    name = own_app(hubbed)
    hubbed.run(_app_in(hubbed, tenant, name))
    theirs = cluster_name(name, tenant)
    viewer = hubbed.mint("viewer", tenant)
    ours, other = update(node, app=name, calls=2), update(node, app=theirs, calls=200)
    pushed = ours.model_copy(
        update={
            "instances": ours.instances + other.instances,
            "endpoints": ours.endpoints + other.endpoints,
        }
    )

    async def both() -> Any:
        await node_api.push_metrics(pushed)
        sample = hubbed.ctx.telemetry.latest()
        return sample if sample and {name, theirs} <= set(sample.apps) else None

    sample = await eventually(both, "both apps' figures")
    assert sample.apps[name].calls_per_s != sample.apps[theirs].calls_per_s
    for token, key in ((hubbed.admin_token, name), (viewer, theirs)):
        apps = (await http.get("/api/v1/metrics", headers=bearer(token))).json()["apps"]
        assert apps[name] == sample.apps[key].model_dump(mode="json"), token
        assert theirs not in apps
    scraped = (await http.get("/metrics", headers=bearer(viewer))).text
    assert f'app="{theirs}"' in scraped and f'app="{name}"' not in scraped


async def _app_in(server: RunningServer, tenant: str, name: str) -> None:
    row = await server.ctx.records.ensure_tenant(tenant)
    await server.ctx.records.get_or_create_app(row.id, name)

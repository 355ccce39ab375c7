"""Slice entry points through a real server: pushes → the leader's figures → API, /metrics,
the stream, the cluster snapshot in the push's answer, and autoscaling by an entry point.

Nodes are played through the real push API, and once by the node's real pusher
with stand-in slice instances (real frame servers answering ``$stats`` and
taking ``$snapshot``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aether.client import ApiClient
from aether.model.api import RegisterIn
from aether.model.cluster import NodeCapabilities, instance_key
from aether.model.names import cluster_name
from aether.model.telemetry import EntryMetrics, InstanceMetrics, NodeMetrics
from aether.node.telemetry import TelemetryCollector, TelemetryPusher
from aether.store.records import DEFAULT_TENANT
from tests.support.api import bearer, deploy, spec_for, unique, upload_random
from tests.support.server import RunningServer, running_server
from tests.support.slice_stats_standin import stats_standin
from tests.support.telemetry import node_sample
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(
        tmp_path_factory.mktemp("slice-telemetry"),
        lease_ttl=60.0,  # registered test nodes stay live without heartbeats
        controller_interval=0.2,
    ) as running:
        yield running


@pytest.fixture
async def http(srv: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=10.0) as client:
        yield client


def own_slice(server: RunningServer, tenant: str = DEFAULT_TENANT) -> str:
    """A new app (a slice is an app) in ``tenant``'s records; its plain name."""
    name = unique("slc")

    async def create() -> None:
        row = await server.ctx.records.ensure_tenant(tenant)
        await server.ctx.records.get_or_create_app(row.id, name)

    server.run(create())
    return name


def instance(node: str, app: str, n: int = 0) -> InstanceMetrics:
    return InstanceMetrics(
        key=instance_key(node, app, 1, n), app=app, version=1, n=n, cpu=0.1, rss_mb=20
    )


def entry_push(node: str, app: str, *, seq: int = 0, calls: int = 10) -> NodeMetrics:
    """A node running one instance of slice ``app`` (cluster name) with entry ``add``."""
    url = f"http://127.0.0.1:{4000 + seq % 7}"
    return node_sample(
        node,
        seq,
        instances=[instance(node, app)],
        entries=[
            EntryMetrics(
                slice=app,
                entry="add",
                source="instance",
                url="http://10.0.0.1:4100",
                calls=calls,
                errors=1,
                duration_s=calls * 0.002,
                in_flight=3,
            ),
            EntryMetrics(slice=app, entry="add", source="router", calls=calls, by_url={url: 1}),
        ],
    )


async def push(
    http: httpx.AsyncClient, server: RunningServer, update: NodeMetrics, **headers: str
) -> httpx.Response:
    return await http.post(
        f"/api/v1/nodes/{update.node}/metrics",
        content=update.model_dump_json(),
        headers={
            **bearer(server.node_token(update.node)),
            "Content-Type": "application/json",
            **headers,
        },
    )


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_entry_figures_reach_the_api_scoped_to_the_slices_tenant(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    node, node2, mine = unique("node"), unique("node"), own_slice(srv)
    tenant = unique("tenant")
    theirs = own_slice(srv, tenant)
    theirs_cluster = cluster_name(theirs, tenant)

    async def both() -> Any:
        await push(http, srv, entry_push(node, mine, calls=10))
        await push(http, srv, entry_push(node2, theirs_cluster, calls=50))
        sample = srv.ctx.telemetry.latest()
        return sample if sample and {mine, theirs_cluster} <= set(sample.slices) else None

    sample = await eventually(both, "both slices' entry points in the latest sample")
    add = sample.slices[mine]["add"]
    # the instance's own counts, not the router's as well
    assert (add.calls_per_s, add.errors_per_s, add.in_flight, add.instances) == (10, 1, 3, 1)
    assert add.mean_ms == pytest.approx(2.0)
    assert add.by_url["http://10.0.0.1:4100"] == 3

    admin = (await http.get("/api/v1/metrics", headers=bearer(srv.admin_token))).json()
    assert admin["slices"][mine]["add"]["calls_per_s"] == 10
    assert theirs_cluster not in admin["slices"] and theirs not in admin["slices"]
    viewer = bearer(srv.mint("viewer", tenant))
    as_tenant = (await http.get("/api/v1/metrics", headers=viewer)).json()
    assert set(as_tenant["slices"]) == {theirs}  # by its plain name, and only its own
    assert as_tenant["slices"][theirs]["add"]["slice"] == theirs

    history = await http.get(
        f"/api/v1/metrics/slices/{theirs}", params={"seconds": 60}, headers=viewer
    )
    assert history.status_code == 200, history.text
    points = history.json()
    assert points and {p["entry"] for p in points} == {"add"}
    assert {p["slice"] for p in points} == {theirs} and points[-1]["calls_per_s"] == 50
    assert [p["ts"] for p in points] == sorted(p["ts"] for p in points)
    # another tenant's slice is not found, by either name
    for name in (mine, theirs_cluster):
        missing = await http.get(f"/api/v1/metrics/slices/{name}", headers=viewer)
        assert missing.status_code == 404, name


async def test_prometheus_counts_entry_calls_for_the_slices_tenant_only(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    node, node2, mine = unique("node"), unique("node"), own_slice(srv)
    tenant = unique("tenant")
    theirs = cluster_name(own_slice(srv, tenant), tenant)
    for seq in range(3):
        await push(http, srv, entry_push(node, mine, seq=seq, calls=4))
        await push(http, srv, entry_push(node2, theirs, seq=seq, calls=1))
    labels = (("entry", "add"), ("slice", mine))

    async def exported() -> Any:
        text = (await http.get("/metrics", headers=bearer(srv.admin_token))).text
        series = scrape(text)
        return series if ("aether_slice_in_flight", labels) in series else None

    series = await eventually(exported, "the slice's series on /metrics")
    assert series[("aether_slice_calls_total", labels)] == 12  # 3 pushes of 4 (instances')
    assert series[("aether_slice_errors_total", labels)] == 3
    assert series[("aether_slice_call_seconds_total", labels)] == pytest.approx(0.024)
    assert series[("aether_slice_in_flight", labels)] == 3
    assert not [k for k in series if ("slice", theirs) in k[1]]  # another tenant's

    as_tenant = scrape(
        (await http.get("/metrics", headers=bearer(srv.mint("viewer", tenant)))).text
    )
    assert as_tenant[("aether_slice_calls_total", (("entry", "add"), ("slice", theirs)))] == 3
    assert not [k for k in as_tenant if ("slice", mine) in k[1]]
    anonymous = (await http.get("/metrics")).text
    assert mine not in anonymous and theirs not in anonymous


async def test_the_push_answer_carries_the_nodes_tenants_snapshots(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    node, node2, mine = unique("node"), unique("node"), own_slice(srv)
    tenant = unique("tenant")
    theirs = cluster_name(own_slice(srv, tenant), tenant)

    async def answered() -> Any:
        await push(http, srv, entry_push(node2, theirs, calls=2))
        response = await push(http, srv, entry_push(node, mine, calls=6))
        if response.status_code != 200:
            return None
        snapshot = response.json()["snapshots"].get(DEFAULT_TENANT, {})
        return response if mine in snapshot.get("slices", {}) else None

    response = await eventually(answered, "a snapshot in the push's answer")
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body["snapshots"]) == {DEFAULT_TENANT}  # the node runs no instance of tenant's
    snapshot = body["snapshots"][DEFAULT_TENANT]
    assert abs(snapshot["at"] - time.time()) < 30
    assert snapshot["slices"][mine] == {
        "add": {
            "in_flight": 3,
            "calls_per_s": 6.0,
            "mean_ms": pytest.approx(2.0),
            "by_url": {"http://10.0.0.1:4100": 3},
        }
    }
    assert theirs not in snapshot["slices"]

    # the route (an Idempotency-Key skips the fast path) answers the same way
    keyed = await push(
        http, srv, entry_push(node, mine, calls=6), **{"Idempotency-Key": unique("k")}
    )
    assert keyed.status_code == 200 and mine in keyed.json()["snapshots"][DEFAULT_TENANT]["slices"]
    # a node of both tenants gets both; a node running nothing gets 204 as before
    both = entry_push(node, mine)
    both = both.model_copy(update={"instances": [*both.instances, instance(node, theirs, 1)]})
    answer = await push(http, srv, both)
    assert set(answer.json()["snapshots"]) == {DEFAULT_TENANT, tenant}
    bare = await push(http, srv, node_sample(unique("node")))
    assert (bare.status_code, bare.content) == (204, b"")


async def test_the_nodes_pusher_collects_stats_and_hands_out_the_snapshot(
    srv: RunningServer, tmp_path: Path
) -> None:
    node, mine = unique("node"), own_slice(srv)
    async with ApiClient(srv.base_url, srv.node_token(node)) as node_api:
        registration = await node_api.register(
            RegisterIn(
                id=node,
                capabilities=NodeCapabilities(cpus=2, memory_mb=1024, drivers=["process"]),
                router_url="http://127.0.0.1:9",
            )
        )
        async with stats_standin("the-key") as standin:
            runner = SimpleNamespace(
                slice_control=standin.control(mine, DEFAULT_TENANT),
                handle=None,  # no process for the /proc figures: a stand-in
            )
            pusher = TelemetryPusher(
                node_api,
                TelemetryCollector(node, tmp_path),
                None,
                {"i": runner},
                lambda: registration,
            )

            async def delivered() -> Any:
                standin.stats = {
                    "add": {"calls": 5, "errors": 0, "duration_s": 0.05, "in_flight": 2}
                }
                update = await pusher.push_once()
                assert [(e.slice, e.entry, e.url) for e in update.entries] == [
                    (mine, "add", standin.url)
                ]
                await asyncio.sleep(0.1)
                newest = standin.snapshots[-1] if standin.snapshots else None
                return newest if newest and mine in newest["slices"] else None

            snapshot = await eventually(delivered, "the snapshot delivered with $snapshot")
            await pusher.close()
    assert snapshot["slices"][mine]["add"]["by_url"] == {standin.url: 2}
    assert snapshot["slices"][mine]["add"]["calls_per_s"] > 0
    assert pusher.slices.snapshots[DEFAULT_TENANT].slices[mine]["add"].in_flight == 2
    assert "$stats" in standin.calls and "$snapshot" in standin.calls


async def test_an_entry_points_open_calls_scale_its_slice(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    app, node = unique("scaled"), unique("pusher")
    admin = bearer(srv.admin_token)
    digest = await upload_random(http, srv.admin_token)
    autoscale = {"entry": "charge", "min": 1, "max": 5, "target": 1.0, "horizon": 0}
    created = await deploy(
        http, srv.admin_token, app, digest, instances=1, spec=spec_for(app, autoscale=autoscale)
    )
    assert created.status_code == 201, created.text

    async def push_forever() -> None:
        seq = 0
        while True:
            seq += 1
            update = node_sample(
                node,
                seq,
                interval=0.3,
                instances=[instance(node, app)],
                entries=[
                    EntryMetrics(
                        slice=app,
                        entry="charge",
                        url="http://10.0.0.2:4000",
                        calls=5,
                        duration_s=0.5,
                        in_flight=4,
                    )
                ],
            )
            response = await push(http, srv, update)
            assert response.status_code in (200, 204), response.text
            await asyncio.sleep(0.3)

    async def desired() -> Any:
        body = (await http.get(f"/api/v1/apps/{app}", headers=admin)).json()
        return body if body["instances_desired"] == 4 else None

    pusher = asyncio.create_task(push_forever())
    try:
        await eventually(desired, "the slice scaled to 4 by its entry point's open calls")
    finally:
        pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pusher

    async def recorded() -> Any:
        answer = await http.get("/api/v1/decisions", params={"target": app}, headers=admin)
        return [d for d in answer.json() if d["kind"] == "scale"]

    [decision] = await eventually(recorded, "the scale decision recorded")
    assert decision["reason"].startswith("entry charge in_flight 4/instance > target 1 ±15%: 1 → 4")
    assert decision["inputs"]["entry"] == "charge"


async def test_the_live_stream_carries_the_tenants_own_entry_points(
    srv: RunningServer, http: httpx.AsyncClient
) -> None:
    node, node2, mine = unique("node"), unique("node"), own_slice(srv)
    tenant = unique("tenant")
    theirs = own_slice(srv, tenant)
    theirs_cluster = cluster_name(theirs, tenant)

    async def both() -> Any:
        await push(http, srv, entry_push(node, mine, calls=3))
        await push(http, srv, entry_push(node2, theirs_cluster, calls=7))
        sample = srv.ctx.telemetry.latest()
        return sample if sample and {mine, theirs_cluster} <= set(sample.slices) else None

    await eventually(both, "both slices in the latest sample")
    async with ApiClient(srv.base_url, srv.mint("viewer", tenant)) as viewer:
        async with asyncio.timeout(15):
            async for sample in viewer.metrics_stream():
                if theirs in sample.slices:
                    break
    assert sample.slices[theirs]["add"].calls_per_s == 7
    assert mine not in sample.slices and theirs_cluster not in sample.slices

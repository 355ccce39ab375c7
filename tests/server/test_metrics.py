"""``GET /metrics``: no token, parseable exposition, and counters that follow real work.

A server of its own (no other test's nodes or uploads), so every movement seen
here was caused here; a node is simulated through the real node API.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aether.artifacts import pack
from aether.artifacts.sync import upload_incremental
from aether.client import ApiClient
from aether.model.api import RegisterIn
from aether.model.app import AppSpec
from aether.model.cluster import NodeCapabilities
from aether.server.asgi import create_asgi
from aether.server.http.prometheus import ServerMetrics
from aether.server.settings import ServerSettings
from tests.support.api import DIGEST_HEADER, assert_envelope, bearer, sha256_of, unique
from tests.support.server import RunningServer, running_server

Labels = tuple[tuple[str, str], ...]


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-metrics")) as running:
        yield running


@pytest.fixture
async def http(metered: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=metered.base_url, timeout=10.0) as client:
        yield client


def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, Labels], float]]:
    types: dict[str, str] = {}
    samples: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, samples


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, Labels], float]:
    return parse((await http.get("/metrics")).text)[1]


def kind(value: str) -> Labels:
    return (("kind", value),)


async def test_metrics_need_no_token_and_parse(http: httpx.AsyncClient) -> None:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    # a token is optional, but a wrong one is refused rather than ignored
    assert_envelope(await http.get("/metrics", headers=bearer("nonsense")), 401, "unauthorized")
    types, samples = parse(response.text)
    assert types["artifact_upload_bytes"] == "counter"
    assert types["artifact_upload_duration_seconds"] == "histogram"
    assert types["artifact_uploads_in_progress"] == "gauge"
    assert types["artifact_uploads_waiting"] == "gauge"
    assert types["artifacts_total"] == "gauge"
    for name in ("deployments_created", "deployments_succeeded", "deployments_failed"):
        assert types[name] == "counter"
    assert ("artifact_upload_bytes_total", kind("artifact")) in samples
    assert ("artifact_upload_bytes_total", kind("blob")) in samples
    assert ("artifact_upload_duration_seconds_count", kind("assemble")) in samples
    assert samples[("artifact_uploads_in_progress", ())] == 0


async def test_upload_counters_move(
    metered: RunningServer, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    token = bearer(metered.admin_token)
    before = await scrape(http)
    data = os.urandom(5000)
    response = await http.post(
        "/api/v1/artifacts", content=data, headers={**token, DIGEST_HEADER: sha256_of(data)}
    )
    assert response.status_code == 201
    blob = os.urandom(700)
    response = await http.put(f"/api/v1/blobs/{sha256_of(blob)}", content=blob, headers=token)
    assert response.status_code == 201
    # a refused upload still counts its bytes and its time
    bad = await http.post(
        "/api/v1/artifacts", content=b"abc", headers={**token, DIGEST_HEADER: sha256_of(b"x")}
    )
    assert bad.status_code == 400
    after = await scrape(http)

    def delta(name: str, labels: Labels = ()) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert delta("artifact_upload_bytes_total", kind("artifact")) == 5000 + 3
    assert delta("artifact_upload_bytes_total", kind("blob")) == 700
    assert delta("artifact_upload_duration_seconds_count", kind("artifact")) == 2
    assert delta("artifact_upload_duration_seconds_count", kind("blob")) == 1
    assert delta("artifact_upload_duration_seconds_sum", kind("artifact")) > 0
    assert delta("artifacts_total") == 1  # the refused one stored nothing
    assert after[("artifacts_total", ())] == len(metered.run(metered.ctx.registry.list_digests()))

    # an assembled artifact: blob bytes for the one file, an assemble observation
    root = tmp_path / "app"
    root.mkdir()
    (root / "main.py").write_text("print('metered')\n")
    result = pack(root, tmp_path / "a.tar.gz")
    async with ApiClient(metered.base_url, metered.admin_token) as client:
        sent = await upload_incremental(
            client, result.plan, root, result.digest, archive=tmp_path / "a.tar.gz"
        )
    assert sent["fallback"] is None
    final = await scrape(http)
    assert final[("artifact_upload_bytes_total", kind("blob"))] == (
        after[("artifact_upload_bytes_total", kind("blob"))] + len("print('metered')\n")
    )
    assert final[("artifact_upload_duration_seconds_count", kind("assemble"))] == (
        after[("artifact_upload_duration_seconds_count", kind("assemble"))] + 1
    )
    assert final[("artifacts_total", ())] == after[("artifacts_total", ())] + 1


async def _register(node_api: ApiClient, node: str) -> tuple[str, int]:
    reg = await node_api.register(
        RegisterIn(
            id=node,
            capabilities=NodeCapabilities(cpus=8, memory_mb=8192, drivers=["process"]),
            router_url="http://127.0.0.1:9",
        )
    )
    return node, reg.lease_id


async def _drive_node(
    node_api: ApiClient,
    admin: ApiClient,
    node: tuple[str, int],
    app: str,
    deployment_id: str,
    *,
    fail: bool,
    want: str,
) -> None:
    """Play a node through the real node API until the deployment reaches ``want``.

    Nothing is scaled down afterwards: scaling a failed deployment to 0 would make
    the leader call it active (all 0 of its instances are ACTIVE).
    """
    node_id, lease_id = node
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        await node_api.heartbeat(node_id, lease_id)
        if (await admin.deployment(deployment_id)).status == want:
            return
        for inst in await admin.instances(app):
            if inst.node != node_id:
                continue
            if inst.command == "LOAD" and inst.state is None:
                if fail:
                    await node_api.report(inst.key, "FAILED", message="exit 1")
                else:
                    await node_api.report(inst.key, "LOADING")
                    await node_api.report(inst.key, "LOADED")
            elif inst.command == "ACTIVATE" and inst.state == "LOADED":
                await node_api.report(inst.key, "ACTIVATING")
                await node_api.report(inst.key, "ACTIVE", url="http://127.0.0.1:9")
            elif inst.command == "UNLOAD" and inst.state != "UNLOADING":
                await node_api.report(inst.key, "UNLOADING")
                await node_api.unloaded(inst.key)
        await asyncio.sleep(0.05)
    raise AssertionError(f"deployment {deployment_id} never became {want}")


async def test_deployment_counters_move(metered: RunningServer, http: httpx.AsyncClient) -> None:
    node_id = unique("metrics-node")
    async with (
        ApiClient(metered.base_url, metered.admin_token) as admin,
        ApiClient(metered.base_url, metered.node_token(node_id)) as node_api,
    ):
        node = await _register(node_api, node_id)
        data = os.urandom(100)
        await http.post(
            "/api/v1/artifacts",
            content=data,
            headers={**bearer(metered.admin_token), DIGEST_HEADER: sha256_of(data)},
        )
        before = await scrape(http)

        def moved(now: dict[tuple[str, Labels], float], name: str) -> float:
            return now[(name, ())] - before[(name, ())]

        good = unique("good")
        dep = await admin.create_deployment(
            good, sha256_of(data), AppSpec(name=good, start="sleep 60"), instances=1
        )
        assert moved(await scrape(http), "deployments_created_total") == 1
        await _drive_node(node_api, admin, node, good, dep.id, fail=False, want="active")
        now = await scrape(http)
        assert moved(now, "deployments_succeeded_total") == 1
        assert moved(now, "deployments_failed_total") == 0

        bad = unique("bad")
        dep = await admin.create_deployment(
            bad, sha256_of(data), AppSpec(name=bad, start="false"), instances=1
        )
        await _drive_node(node_api, admin, node, bad, dep.id, fail=True, want="failed")
        now = await scrape(http)
        assert moved(now, "deployments_created_total") == 2
        assert moved(now, "deployments_failed_total") == 1
        assert moved(now, "deployments_succeeded_total") == 1


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    """Two servers in one process never share (or collide on) a metric."""
    one = create_asgi(ServerSettings(data_dir=tmp_path / "one"))
    two = create_asgi(ServerSettings(data_dir=tmp_path / "two"))
    m1: ServerMetrics = one.state.metrics
    m2: ServerMetrics = two.state.metrics
    assert m1.registry is not m2.registry
    m1.deployments_created.inc()
    assert m1.registry.get_sample_value("deployments_created_total") == 1
    assert m2.registry.get_sample_value("deployments_created_total") == 0

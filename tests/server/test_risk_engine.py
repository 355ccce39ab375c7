"""The risk engine on a real leader: signals in, assessments out, the fire drill.

A server of its own (so the nodes and rows are only this module's), with a long
lease so registered nodes stay live without heartbeats.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aether.client import ApiClient
from aether.errors import ConflictError
from aether.model.api import RegisterIn
from aether.model.cluster import NodeCapabilities
from aether.model.risk import RiskAssessment, RiskStatus, SignalIn
from aether.model.telemetry import InstanceMetrics
from aether.server.leader.risk import RiskEngine
from tests.support.api import bearer, unique, upload_random
from tests.support.server import RunningServer, running_server
from tests.support.telemetry import node_sample

DEADLINE = 10.0  # generous: a pass runs every second and at once on a new signal


@pytest.fixture(scope="module")
def risky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-risk"), lease_ttl=60.0) as running:
        yield running


async def until(
    api: ApiClient, node: str, status: RiskStatus, root_cause: str | None = None
) -> RiskAssessment:
    """Poll ``GET /risk`` until the node has this verdict."""
    deadline = time.monotonic() + DEADLINE
    seen: RiskAssessment | None = None
    while time.monotonic() < deadline:
        seen = next((a for a in await api.risk() if a.node == node), None)
        if (
            seen is not None
            and seen.status is status
            and (root_cause is None or seen.root_cause == root_cause)
        ):
            return seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"{node} never became {status} {root_cause or ''}; last: {seen}")


async def register(api: ApiClient, node: str, **labels: str) -> None:
    await api.register(
        RegisterIn(
            id=node,
            capabilities=NodeCapabilities(
                cpus=8, memory_mb=8192, drivers=["process"], labels=labels
            ),
            router_url="http://127.0.0.1:9",
        )
    )


def prices(node: str, values: list[float], step: float = 20.0) -> list[SignalIn]:
    now = time.time()
    last = len(values) - 1
    return [
        SignalIn(node=node, kind="spot_price", value=v, ts=now - (last - i) * step)
        for i, v in enumerate(values)
    ]


async def test_prices_move_the_assessment_and_changes_are_recorded(risky: RunningServer) -> None:
    node = unique("priced")
    async with ApiClient(risky.base_url, risky.token("operator")) as api:
        await api.post_signals(prices(node, [0.30] * 10, step=30))
        stable = await until(api, node, RiskStatus.LOW, "Stable")
        assert stable.inputs["market.price_trend"]["points"] == 10
        assert stable.inputs["market.price_trend"]["trend"] == 0.0

        await api.post_signals(prices(node, [0.36, 0.40, 0.42], step=1))
        spiked = await until(api, node, RiskStatus.CRITICAL, "Price Spike Detected")
        assert spiked.rule == "market.price_trend"
        assert spiked.inputs["market.price_trend"]["trend"] == pytest.approx(0.4)
        assert spiked.inputs["market.volatility"]["status"] == "CRITICAL"

        history = await api.risk_history(node)
        assert [(a.status, a.root_cause) for a in history[:2]] == [
            (RiskStatus.CRITICAL, "Price Spike Detected"),
            (RiskStatus.LOW, "Stable"),
        ]
        assert history[0].ts >= history[1].ts
        assert history[0].inputs["market.price_trend"]["last"] == 0.42


async def test_signals_written_to_the_records_reach_the_engine_without_a_wake(
    risky: RunningServer,
) -> None:
    """What another server records (no wake here) is read by id at the next tick."""
    node = unique("elsewhere")

    async def write() -> list[int]:
        row = {
            "node": node,
            "kind": "capacity",
            "value": 0.05,
            "source": "other",
            "ts": time.time(),
        }
        return await risky.ctx.records.add_signals([row])

    risky.run(write())
    async with ApiClient(risky.base_url, risky.token("viewer")) as api:
        verdict = await until(api, node, RiskStatus.HIGH, "Low Spare Capacity")
    assert verdict.inputs["market.capacity"]["score"] == 0.05


async def test_a_new_leader_rebuilds_the_same_view_from_the_records(risky: RunningServer) -> None:
    node = unique("failover")
    async with ApiClient(risky.base_url, risky.token("operator")) as api:
        await api.market_signal(node, rebalance=True)
        await until(api, node, RiskStatus.CRITICAL, "Cloud Provider Signal")
        rows = len(await api.risk_history(node, limit=1000))

        async def fresh_engine() -> dict[str, RiskAssessment]:
            return await RiskEngine(risky.ctx).evaluate(time.time())

        verdicts = risky.run(fresh_engine())
        assert verdicts[node].root_cause == "Cloud Provider Signal"
        # it knew what was already recorded: an unchanged verdict is not written again
        assert len(await api.risk_history(node, limit=1000)) == rows


async def test_an_unchanged_verdict_is_written_again_after_a_minute(risky: RunningServer) -> None:
    node = unique("minutely")
    async with ApiClient(risky.base_url, risky.token("operator")) as api:
        await api.market_signal(node, capacity_score=0.9)
        await until(api, node, RiskStatus.LOW)
        engine = risky.risk
        assert engine is not None
        before = len(await api.risk_history(node, limit=1000))
        risky.run(engine.evaluate(time.time() + 1))
        assert len(await api.risk_history(node, limit=1000)) == before
        risky.run(engine.evaluate(time.time() + 61))
        assert len(await api.risk_history(node, limit=1000)) == before + 1


async def drilled(server: RunningServer) -> list[str]:
    """``GET /api/v1/drill`` as a viewer: the nodes with a drill running."""
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        answer = await http.get("/api/v1/drill", headers=bearer(server.token("viewer")))
    assert answer.status_code == 200, answer.text
    nodes: list[str] = answer.json()["nodes"]
    return nodes


async def test_fire_drill_start_and_stop(risky: RunningServer) -> None:
    node = unique("drilled")
    async with (
        ApiClient(risky.base_url, risky.node_token(node)) as node_api,
        ApiClient(risky.base_url, risky.token("operator")) as api,
    ):
        await register(node_api, node)
        await api.post_signals(prices(node, [0.5] * 5, step=60))  # a real price history
        await until(api, node, RiskStatus.LOW, "Stable")

        started = await api.drill_start(node)
        assert started["node"] == node
        assert started["signals"] == 11  # ten prices and a rebalance notice
        assert started["base_price"] == 0.5  # the drill spikes from the real price
        assert started["spike_price"] == pytest.approx(0.8)
        critical = await until(api, node, RiskStatus.CRITICAL, "Cloud Provider Signal")
        assert critical.rule == "market.rebalance"
        assert node in await drilled(risky)  # a viewer sees where a drill runs
        assert critical.inputs["market.rebalance"]["source"] == "drill"
        assert critical.inputs["market.price_trend"]["status"] == "CRITICAL"

        stopped = await api.drill_stop(node)
        assert stopped == {"nodes": [node], "signals": 1}
        assert node not in await drilled(risky)
        await until(api, node, RiskStatus.LOW, "Stable")

        # the history keeps everything: real prices, the drill and its end
        kinds = [(s.source, s.kind) for s in await api.signals(node=node, limit=1000)]
        assert kinds[0] == ("drill", "clear")
        assert kinds.count(("drill", "spot_price")) == 10
        assert ("drill", "rebalance") in kinds
        assert kinds.count(("api", "spot_price")) == 5
        verdicts = [(a.status, a.root_cause) for a in await api.risk_history(node)]
        assert verdicts[:3] == [
            (RiskStatus.LOW, "Stable"),
            (RiskStatus.CRITICAL, "Cloud Provider Signal"),
            (RiskStatus.LOW, "Stable"),
        ]
        # nothing left to stop
        assert await api.drill_stop() == {"nodes": [], "signals": 0}


async def test_a_drill_without_a_node_picks_the_busiest_live_node(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with running_server(tmp_path_factory.mktemp("aether-drill"), lease_ttl=60.0) as srv:
        async with (
            ApiClient(srv.base_url, srv.node_token("idle-node")) as node_api,
            ApiClient(srv.base_url, srv.admin_token) as api,
            httpx.AsyncClient(base_url=srv.base_url) as http,
        ):
            with pytest.raises(ConflictError, match="no live node"):
                await api.drill_start()
            await register(node_api, "idle-node")
            node_api.use_token(srv.node_token("busy-node"))
            await register(node_api, "busy-node", pool="busy")
            app = unique("busy")
            digest = await upload_random(http, srv.admin_token)
            body: dict[str, Any] = {
                "digest": digest,
                "spec": {"name": app, "start": "sleep 1", "constraints": {"pool": "busy"}},
                "instances": 2,
            }
            created = await http.post(
                f"/api/v1/apps/{app}/deployments", json=body, headers=bearer(srv.admin_token)
            )
            assert created.status_code == 201, created.text
            deadline = time.monotonic() + DEADLINE
            while len(await api.instances(app)) < 2:
                assert time.monotonic() < deadline, "the instances were never placed"
                await asyncio.sleep(0.05)

            started = await api.drill_start()
            assert started["node"] == "busy-node"
            assert started["base_price"] == 0.1  # no real price: the default base
            await until(api, "busy-node", RiskStatus.CRITICAL, "Cloud Provider Signal")
            assert await api.drill_stop() == {"nodes": ["busy-node"], "signals": 1}
            await until(api, "busy-node", RiskStatus.LOW, "Stable")


async def test_risk_levels_are_on_the_metrics_page(risky: RunningServer) -> None:
    node = unique("gauged")
    async with ApiClient(risky.base_url, risky.token("operator")) as api:
        await api.market_signal(node, rebalance=True)
        await until(api, node, RiskStatus.CRITICAL)
        text = (await api.request("GET", "/metrics")).text
    assert f'node_risk_level{{node="{node}"}} 3.0' in text


async def test_node_health_from_real_telemetry_pushes(risky: RunningServer) -> None:
    """Memory pressure, a crash loop, then silence, through the telemetry hub."""
    node = unique("pushing")
    figures = {"memory_used_mb": 980.0, "restarts": 0}
    pushing = True

    async def pusher(node_api: ApiClient) -> None:
        seq = 0
        while pushing:
            seq += 1
            instance = InstanceMetrics(
                key=f"instances/{node}/app@1/0",
                app="app",
                version=1,
                n=0,
                cpu=0.1,
                rss_mb=10,
                restarts=int(figures["restarts"]),
            )
            await node_api.push_metrics(
                node_sample(
                    node,
                    seq,
                    cpu=0.2,
                    memory_used_mb=figures["memory_used_mb"],
                    disk_used_mb=10.0,
                    disk_total_mb=1000.0,
                    instances=[instance],
                )
            )
            await asyncio.sleep(0.25)

    async with (
        ApiClient(risky.base_url, risky.node_token(node)) as node_api,
        ApiClient(risky.base_url, risky.token("viewer")) as api,
    ):
        await register(node_api, node)
        task = asyncio.create_task(pusher(node_api))
        try:
            memory = await until(api, node, RiskStatus.CRITICAL, "Memory Pressure")
            assert memory.inputs["health.memory"]["fraction"] == 0.98
            assert memory.inputs["health.heartbeat"]["stale"] is False

            figures["memory_used_mb"] = 500.0
            for restarts in range(1, 5):  # the instance keeps crashing
                await asyncio.sleep(0.6)
                figures["restarts"] = restarts
            looping = await until(api, node, RiskStatus.HIGH, "Crash Loop")
            assert looping.inputs["health.crash_loop"]["restarts"] >= 3
            assert looping.inputs["health.memory"]["status"] == "LOW"
        finally:
            pushing = False
            await task
        silent = await until(api, node, RiskStatus.HIGH, "Telemetry Stale")
        assert silent.inputs["health.heartbeat"]["stale"] is True

"""Telemetry math: pushes folded into node and app samples, samples rolled up per minute."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aether.core.telemetry import (
    FORGET_AFTER,
    NodeState,
    RollupAccumulator,
    aggregate,
    fold,
    minute_of,
    net_rate,
    retention_cutoff,
    rollups,
)
from aether.model.telemetry import (
    AppSample,
    ClusterSample,
    EndpointMetrics,
    InstanceMetrics,
    NodeMetrics,
    NodeSample,
)

T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)


def inst(app: str, n: int, cpu: float, rss: float, restarts: int = 0) -> InstanceMetrics:
    return InstanceMetrics(
        key=f"instances/x/{app}@1/{n}",
        app=app,
        version=1,
        n=n,
        cpu=cpu,
        rss_mb=rss,
        restarts=restarts,
    )


def push(
    node: str,
    ts: float = T0,
    *,
    interval: float = 1.0,
    cpu: float = 0.5,
    rx: int = 0,
    tx: int = 0,
    instances: list[InstanceMetrics] | None = None,
    endpoints: list[EndpointMetrics] | None = None,
) -> NodeMetrics:
    return NodeMetrics(
        node=node,
        ts=ts,
        interval=interval,
        cpu=cpu,
        memory_used_mb=2048,
        memory_total_mb=8192,
        disk_used_mb=30,
        disk_total_mb=120,
        net_rx_bytes=rx,
        net_tx_bytes=tx,
        instances=instances or [],
        endpoints=endpoints or [],
    )


def state(update: NodeMetrics, received_at: float | None = None) -> NodeState:
    return fold(update, None, update.ts if received_at is None else received_at)


def test_node_figures_come_from_the_latest_push() -> None:
    s = state(push("a", instances=[inst("web", 0, 0.2, 10, restarts=2), inst("web", 1, 0.1, 20)]))
    sample = aggregate([s], now=T0 + 0.4).nodes["a"]
    assert sample.cpu == 0.5
    assert sample.memory_fraction == 0.25
    assert sample.disk_fraction == 0.25
    assert sample.instances == 2
    assert sample.restarts == 2
    assert sample.age == pytest.approx(0.4)
    assert not sample.stale


def test_network_rates_come_from_two_pushes_by_the_node_clock() -> None:
    first = state(push("a", T0, rx=1_000, tx=500))
    second = fold(push("a", T0 + 2, rx=5_000, tx=1_500), first, received_at=T0 + 10)
    assert (second.net_rx_per_s, second.net_tx_per_s) == (2_000, 500)
    # a reboot resets the counters: no negative rate
    rebooted = fold(push("a", T0 + 3, rx=10, tx=10), second, received_at=T0 + 11)
    assert (rebooted.net_rx_per_s, rebooted.net_tx_per_s) == (0, 0)
    # a repeated push (same node clock) keeps the rates it had
    repeated = fold(push("a", T0 + 2, rx=5_000, tx=1_500), second, received_at=T0 + 12)
    assert (repeated.net_rx_per_s, repeated.net_tx_per_s) == (2_000, 500)
    assert state(push("a", rx=99)).net_rx_per_s == 0  # first push: nothing to compare with


def test_net_rate() -> None:
    assert net_rate(100, 300, 2.0) == 100
    assert net_rate(300, 100, 2.0) == 0
    assert net_rate(100, 300, 0.0) == 0


def test_a_node_is_stale_after_three_of_its_intervals_and_forgotten_later() -> None:
    fast = state(push("fast", interval=1.0))
    slow = state(push("slow", interval=2.0))
    sample = aggregate([fast, slow], now=T0 + 3.5)
    assert sample.nodes["fast"].stale
    assert not sample.nodes["slow"].stale
    assert sample.nodes["fast"].age == 3.5
    later = aggregate([fast, slow], now=T0 + FORGET_AFTER + 1)
    assert later.nodes == {}


def test_app_figures_sum_endpoints_over_routers_and_average_instances() -> None:
    a = state(
        push(
            "a",
            interval=1.0,
            instances=[inst("web", 0, 0.4, 100, restarts=1), inst("api", 0, 1.0, 50)],
            endpoints=[
                EndpointMetrics(app="web", calls=10, errors=1, total_ms=200, in_flight=3),
                EndpointMetrics(app="api", calls=0, total_ms=0),
            ],
        )
    )
    b = state(
        push(
            "b",
            interval=2.0,
            instances=[inst("web", 1, 0.2, 300), inst("web", 2, 0.0, 200, restarts=2)],
            endpoints=[EndpointMetrics(app="web", calls=30, errors=4, total_ms=400, in_flight=0)],
        )
    )
    web = aggregate([a, b], now=T0).apps["web"]
    assert web.instances == 3
    assert web.cpu_per_instance == pytest.approx(0.2)
    assert web.rss_mb_per_instance == pytest.approx(200)
    assert web.calls_per_s == pytest.approx(10 + 15)  # calls / each node's own interval
    assert web.errors_per_s == pytest.approx(1 + 2)
    assert web.latency_ms == pytest.approx(600 / 40)
    assert web.in_flight_per_instance == pytest.approx(1.0)
    assert web.restarts == 3
    api = aggregate([a, b], now=T0).apps["api"]
    assert (api.calls_per_s, api.latency_ms, api.instances) == (0, 0, 1)


def test_an_app_seen_only_by_a_router_has_no_instances_but_its_calls() -> None:
    ep = EndpointMetrics(app="ghost", calls=4, errors=4, total_ms=8, in_flight=2)
    ghost = aggregate([state(push("a", endpoints=[ep]))], now=T0).apps["ghost"]
    assert ghost.instances == 0
    assert ghost.cpu_per_instance == 0
    assert ghost.in_flight_per_instance == 2  # the open calls themselves
    assert ghost.errors_per_s == 4


def test_stale_nodes_do_not_count_for_apps() -> None:
    ep = EndpointMetrics(app="web", calls=10, total_ms=10)
    fresh = state(push("fresh", T0 + 10, instances=[inst("web", 0, 0.5, 1)], endpoints=[ep]))
    stale = state(push("stale", T0, instances=[inst("web", 1, 0.9, 1)], endpoints=[ep]))
    web = aggregate([fresh, stale], now=T0 + 10).apps["web"]
    assert web.instances == 1
    assert web.calls_per_s == 10
    assert web.cpu_per_instance == 0.5


def test_samples_are_sorted_by_name() -> None:
    sample = aggregate([state(push(n)) for n in ("c", "a", "b")], now=T0)
    assert list(sample.nodes) == ["a", "b", "c"]


@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.5, 1.0, 2.0]),
            st.lists(st.floats(0, 8), min_size=0, max_size=4),
            st.integers(0, 1000),
            st.floats(0, 10_000),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_app_sample_is_consistent_with_its_parts(
    nodes: list[tuple[float, list[float], int, float]],
) -> None:
    states = [
        state(
            push(
                f"n{i}",
                interval=interval,
                instances=[inst("web", k, c, 1) for k, c in enumerate(cpus)],
                endpoints=[EndpointMetrics(app="web", calls=calls, total_ms=total)],
            )
        )
        for i, (interval, cpus, calls, total) in enumerate(nodes)
    ]
    web = aggregate(states, now=T0).apps["web"]
    all_cpus = [c for _, cpus, _, _ in nodes for c in cpus]
    assert web.instances == len(all_cpus)
    if all_cpus:
        assert min(all_cpus) - 1e-9 <= web.cpu_per_instance <= max(all_cpus) + 1e-9
    assert web.calls_per_s == pytest.approx(sum(c / i for i, _, c, _ in nodes))
    calls = sum(c for _, _, c, _ in nodes)
    expected = sum(t for *_, t in nodes) / calls if calls else 0.0
    assert web.latency_ms == pytest.approx(expected)


# -- roll-ups -----------------------------------------------------------------------


def node_sample(name: str, cpu: float, *, stale: bool = False) -> NodeSample:
    return NodeSample(
        node=name,
        cpu=cpu,
        memory_fraction=cpu / 2,
        disk_fraction=0.5,
        net_rx_per_s=100 * cpu,
        net_tx_per_s=0,
        instances=2,
        restarts=1,
        age=0,
        stale=stale,
    )


def app_sample(name: str, calls: float, latency: float) -> AppSample:
    return AppSample(
        app=name,
        instances=2,
        cpu_per_instance=0.1,
        rss_mb_per_instance=10,
        calls_per_s=calls,
        errors_per_s=0,
        latency_ms=latency,
        in_flight_per_instance=0,
        restarts=0,
    )


def cluster(ts: float, nodes: list[NodeSample], apps: list[AppSample]) -> ClusterSample:
    return ClusterSample(ts=ts, nodes={n.node: n for n in nodes}, apps={a.app: a for a in apps})


def test_minute_of_and_retention_cutoff() -> None:
    assert minute_of(T0 + 59.9) == T0
    assert minute_of(T0 + 60) == T0 + 60
    assert minute_of(T0 - 0.1) == T0 - 60
    assert retention_cutoff(T0 + 7 * 86400 + 30, 7) == T0


def test_rollups_average_and_max_each_minute_of_fresh_seconds() -> None:
    samples = [
        cluster(T0 + 0, [node_sample("a", 0.2), node_sample("b", 0.9, stale=True)], []),
        cluster(T0 + 1, [node_sample("a", 0.4)], [app_sample("web", 10, 5)]),
        cluster(T0 + 2, [node_sample("a", 0.9)], [app_sample("web", 30, 1)]),
        cluster(T0 + 60, [node_sample("a", 0.1)], [app_sample("web", 0, 0)]),
    ]
    out = rollups(samples)
    assert [(r.kind, r.name, r.minute) for r in out] == [
        ("node", "a", T0),
        ("app", "web", T0),
        ("node", "a", T0 + 60),
        ("app", "web", T0 + 60),
    ]  # "b" was only ever stale: no roll-up
    node_a = out[0]
    assert node_a.samples == 3
    assert node_a.avg["cpu"] == pytest.approx(0.5)
    assert node_a.max["cpu"] == 0.9
    assert node_a.avg["net_rx_per_s"] == pytest.approx(50)
    assert node_a.max["instances"] == 2
    web = out[1]
    assert web.samples == 2
    assert web.avg["calls_per_s"] == 20
    assert web.max["calls_per_s"] == 30
    # mean call duration: weighted by calls (10 calls at 5 ms, 30 at 1 ms)
    assert web.avg["latency_ms"] == pytest.approx((10 * 5 + 30 * 1) / 40)
    assert web.max["latency_ms"] == 5
    assert out[3].avg["latency_ms"] == 0  # no calls in that minute
    assert all(math.isfinite(v) for r in out for v in (*r.avg.values(), *r.max.values()))


def test_an_accumulator_ignores_other_minutes() -> None:
    acc = RollupAccumulator(T0 + 30)
    assert acc.minute == T0
    acc.add(cluster(T0 + 61, [node_sample("a", 1.0)], []))
    acc.add(cluster(T0 + 5, [node_sample("a", 0.5)], []))
    (only,) = acc.rollups()
    assert (only.samples, only.avg["cpu"]) == (1, 0.5)

"""Slice entry points in the telemetry math: pushes folded, nodes summed, snapshots per tenant."""

from __future__ import annotations

from typing import Any

from aether.core.telemetry import aggregate, fold, tenant_snapshots
from aether.model.telemetry import EntryMetrics, NodeMetrics

NOW = 1_767_225_600.0


def push(node: str, entries: list[EntryMetrics], *, interval: float = 1.0) -> NodeMetrics:
    return NodeMetrics(
        node=node,
        ts=NOW,
        interval=interval,
        cpu=0.1,
        memory_used_mb=1,
        memory_total_mb=2,
        disk_used_mb=1,
        disk_total_mb=2,
        net_rx_bytes=0,
        net_tx_bytes=0,
        entries=entries,
    )


def served(slice_: str, entry: str, url: str, **figures: Any) -> EntryMetrics:
    return EntryMetrics(slice=slice_, entry=entry, source="instance", url=url, **figures)


def routed(slice_: str, entry: str, **figures: Any) -> EntryMetrics:
    return EntryMetrics(slice=slice_, entry=entry, source="router", **figures)


def test_an_entry_is_summed_over_nodes_and_instances() -> None:
    a = push(
        "a",
        [
            served("cart", "add", "http://a:1", calls=10, errors=1, duration_s=0.05, in_flight=2),
            served("cart", "add", "http://a:2", calls=30, duration_s=0.15, in_flight=1),
        ],
    )
    b = push(
        "b",
        [served("cart", "add", "http://b:1", calls=20, errors=3, duration_s=0.2, in_flight=4)],
        interval=2.0,
    )
    sample = aggregate([fold(a, None, NOW), fold(b, None, NOW)], NOW)
    add = sample.slices["cart"]["add"]
    assert add.instances == 3
    assert add.calls_per_s == 10 + 30 + 20 / 2.0  # rates: each node's over its interval
    assert add.errors_per_s == 1 + 3 / 2.0
    assert round(add.mean_ms, 6) == round(1000 * 0.4 / 60, 6)  # summed duration / calls
    assert add.in_flight == 7
    assert add.in_flight_per_instance == 7 / 3
    assert add.by_url == {"http://a:1": 2, "http://a:2": 1, "http://b:1": 4}


def test_instances_counts_win_over_routers_so_no_call_is_counted_twice() -> None:
    """The same 10 calls, sent by node a's router to node b's instance."""
    a = push("a", [routed("cart", "add", calls=10, duration_s=1.0, by_url={"http://b:1": 1})])
    b = push("b", [served("cart", "add", "http://b:1", calls=10, duration_s=0.5, in_flight=1)])
    both = aggregate([fold(a, None, NOW), fold(b, None, NOW)], NOW).slices["cart"]["add"]
    assert (both.calls_per_s, both.mean_ms, both.in_flight, both.instances) == (10, 50, 1, 1)
    assert both.by_url == {"http://b:1": 1}

    # no instance reported it (an instance that did not answer $stats): the routers' counts
    alone = aggregate([fold(a, None, NOW)], NOW).slices["cart"]["add"]
    assert (alone.calls_per_s, alone.mean_ms, alone.instances) == (10, 100, 0)
    assert alone.in_flight_per_instance == alone.in_flight == 0
    assert alone.by_url == {"http://b:1": 1}


def test_a_stale_node_adds_no_entry_figures_and_old_pushes_have_none() -> None:
    stale = fold(push("a", [served("cart", "add", "http://a:1", calls=5)]), None, NOW - 60)
    assert aggregate([stale], NOW).slices == {}
    old = NodeMetrics.model_validate(
        {k: v for k, v in push("b", []).model_dump().items() if k != "entries"}
    )
    assert aggregate([fold(old, None, NOW)], NOW).slices == {}


def test_each_tenant_gets_its_own_slices_by_their_plain_names() -> None:
    pushed = push(
        "a",
        [
            served("cart", "add", "http://a:1", calls=4, duration_s=0.02, in_flight=3),
            served("cart.acme", "add", "http://a:2", calls=1, in_flight=9),
            served("billing.acme", "charge", "http://a:3", calls=2, duration_s=1.0),
        ],
    )
    sample = aggregate([fold(pushed, None, NOW)], NOW)
    snapshots = tenant_snapshots(sample)
    assert set(snapshots) == {"default", "acme"}
    default = snapshots["default"].model_dump(mode="json")
    assert default == {
        "at": NOW,
        "slices": {
            "cart": {
                "add": {
                    "in_flight": 3,
                    "calls_per_s": 4.0,
                    "mean_ms": 5.0,
                    "by_url": {"http://a:1": 3},
                }
            }
        },
    }
    acme = snapshots["acme"]
    assert set(acme.slices) == {"cart", "billing"}
    assert acme.slices["cart"]["add"].by_url == {"http://a:2": 9}
    assert acme.slices["billing"]["charge"].mean_ms == 500.0

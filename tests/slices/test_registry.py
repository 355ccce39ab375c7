"""Choosing endpoints for a handle call: local first, round robin, least in flight."""

from __future__ import annotations

import pytest

from aether.slices.registry import Endpoint, Registry, in_flight_of, order_endpoints

A = Endpoint("http://a:1", "n1", 1)
B = Endpoint("http://b:1", "n2", 1)
C = Endpoint("http://c:1", "n2", 2)


def test_local_endpoints_come_first() -> None:
    for turn in range(4):
        assert order_endpoints((B, A, C), node="n1", turn=turn)[0] == A


def test_round_robin_rotates_within_each_group() -> None:
    firsts = [order_endpoints((A, B, C), node="n1", turn=t)[1] for t in range(4)]
    assert firsts == [B, C, B, C]
    assert [order_endpoints((A, B, C), node=None, turn=t)[0] for t in range(3)] == [A, B, C]


def test_least_in_flight_prefers_the_least_loaded() -> None:
    load = {A.url: 5.0, B.url: 2.0, C.url: 0.0}
    ordered = order_endpoints((A, B, C), node=None, turn=0, balance="least_in_flight", load=load)
    assert ordered == [C, B, A]
    # local still first
    ordered = order_endpoints((A, B, C), node="n1", turn=0, balance="least_in_flight", load=load)
    assert ordered == [A, C, B]


def test_the_snapshot_shape_is_read_both_ways() -> None:
    snapshot = {"slices": {"cart": {"total": {"by_url": {"u1": 3, "u2": {"in_flight": 4}}}}}}
    assert in_flight_of(snapshot, "cart", "total", "u1") == 3
    assert in_flight_of(snapshot, "cart", "total", "u2") == 4
    assert in_flight_of(snapshot, "cart", "total", "u3") == 0
    assert in_flight_of({}, "cart", "total", "u1") == 0


def test_a_pushed_table_replaces_the_last() -> None:
    registry = Registry()
    count = registry.replace(
        {
            "cart": {
                "total": [
                    {"url": "http://a:1", "node": "n1", "n": 1, "schema": {"idempotent": True}},
                    {"url": "http://b:1", "node": "n2", "n": 1},
                ]
            }
        },
        "n1",
    )
    assert count == 2
    assert registry.endpoints("cart", "total")[0].idempotent is True
    assert registry.endpoints("cart", "total")[1].idempotent is None
    registry.replace({}, "n1")
    assert registry.endpoints("cart", "total") == ()
    with pytest.raises(ValueError):
        registry.replace({"cart": {"total": [{"node": "n1"}]}}, "n1")

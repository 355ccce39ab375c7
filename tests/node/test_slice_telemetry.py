"""The node's slice telemetry: $stats from real frame servers, router counters, $snapshot out."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import SimpleNamespace
from typing import cast

from aether.model.telemetry import TenantSnapshot
from aether.node.router import CallCounter, Router
from aether.node.runner import InstanceRunner
from aether.node.slice_control import SliceControl
from aether.node.slice_telemetry import (
    SliceControls,
    SliceTarget,
    router_entries,
    slice_targets,
    stats_entries,
)
from tests.support.slice_stats_standin import stats_standin


def test_targets_are_the_runners_with_a_slice_control() -> None:
    control = SliceControl(host="10.0.0.5", port=4100, key="k", app="cart.acme", tenant="acme")
    runners = {
        "a": SimpleNamespace(slice_control=control),
        "b": SimpleNamespace(slice_control=None),  # a slice not ACTIVE (or an ordinary app)
    }
    targets = slice_targets(cast(Mapping[str, InstanceRunner], runners))
    assert targets == [SliceTarget("cart.acme", "acme", "10.0.0.5", 4100, "k")]
    assert targets[0].url == "http://10.0.0.5:4100"


def test_a_stats_answer_becomes_instance_rows_and_nonsense_is_left_out() -> None:
    target = SliceTarget("cart", "default", "h", 1, "k")
    rows = stats_entries(
        target,
        {
            "add": {"calls": 3, "errors": 1, "duration_s": 0.25, "in_flight": 2},
            "total": {"calls": -4, "duration_s": float("inf"), "in_flight": True},
            "": {"calls": 1},
            "odd": "not figures",
        },
    )
    assert [(r.entry, r.calls, r.errors, r.duration_s, r.in_flight) for r in rows] == [
        ("add", 3, 1, 0.25, 2),
        ("total", 0, 0, 0.0, 0),
    ]
    assert {(r.source, r.url, r.slice) for r in rows} == {("instance", "http://h:1", "cart")}
    assert stats_entries(target, None) == [] and stats_entries(target, [1, 2]) == []


def test_router_counters_become_router_rows() -> None:
    router = Router("127.0.0.1", 0)
    add = CallCounter()
    add.calls, add.errors, add.total_ms = 5, 1, 250.0
    router._entry_counters[("cart", "add")] = add
    router._entry_in_flight[("cart", "total")] = 3
    rows = router_entries(router)
    assert [(r.slice, r.entry, r.calls, r.errors, r.duration_s, r.in_flight) for r in rows] == [
        ("cart", "add", 5, 1, 0.25, 0),
        ("cart", "total", 0, 0, 0.0, 3),
    ]
    assert rows[0].source == "router"
    assert router_entries(router)[0].calls == 0  # taken: reset (the open call stays)
    assert router_entries(None) == []


async def test_stats_come_from_every_instance_at_once_and_a_slow_one_adds_none() -> None:
    controls = SliceControls()
    async with (
        stats_standin("key-a") as a,
        stats_standin("key-b") as b,
        stats_standin("key-c") as slow,
    ):
        a.stats = {"add": {"calls": 7, "errors": 0, "duration_s": 0.07, "in_flight": 1}}
        b.stats = {"add": {"calls": 2, "errors": 2, "duration_s": 0.5, "in_flight": 0}}
        slow.stats = {"add": {"calls": 99}}
        slow.delay = 2.0
        targets = [
            SliceTarget("cart", "default", a.host, a.port, a.key),
            SliceTarget("cart.acme", "acme", b.host, b.port, b.key),
            SliceTarget("cart", "default", slow.host, slow.port, slow.key),
        ]
        started = time.monotonic()
        rows = await controls.stats(targets, timeout=0.3)
        assert time.monotonic() - started < 1.5  # in parallel, bounded by the timeout
        assert sorted((r.slice, r.url, r.calls, r.errors) for r in rows) == [
            ("cart", a.url, 7, 0),
            ("cart.acme", b.url, 2, 2),
        ]
        assert controls.failed == 1
        # counted since the previous $stats: the second take is empty; one connection each
        again = await controls.stats(targets[:2], timeout=0.3)
        assert again == []
        assert a.calls == ["$stats", "$stats"]

        # a wrong key is refused by the instance: no rows, no exception
        wrong = SliceTarget("cart", "default", a.host, a.port, "not-the-key")
        a.stats = {"add": {"calls": 1}}
        assert await controls.stats([wrong], timeout=0.3) == []
        await controls.close()


async def test_each_tenants_snapshot_goes_to_its_own_instances_only() -> None:
    controls = SliceControls()
    async with stats_standin("ka") as mine, stats_standin("kb") as theirs:
        targets = [
            SliceTarget("cart", "default", mine.host, mine.port, mine.key),
            SliceTarget("cart.acme", "acme", theirs.host, theirs.port, theirs.key),
        ]
        snapshot = TenantSnapshot.model_validate(
            {
                "at": 12.5,
                "slices": {
                    "cart": {
                        "add": {
                            "in_flight": 2,
                            "calls_per_s": 4.0,
                            "mean_ms": 1.5,
                            "by_url": {mine.url: 2},
                        }
                    }
                },
            }
        )
        controls.keep({"default": snapshot})
        await controls.deliver(targets)
        assert mine.snapshots == [snapshot.model_dump(mode="json")]
        assert theirs.snapshots == []  # no snapshot of tenant acme: nothing sent
        assert controls.delivered == 1

        controls.keep({"acme": snapshot})
        controls.deliver_soon(targets)
        controls.deliver_soon(targets)  # while one delivery runs, no second
        assert controls._delivering is not None
        await controls._delivering
        assert len(theirs.snapshots) == 1 and len(mine.snapshots) == 1
        await controls.close()

"""Planner throughput: placements per second for 10,000 instances on 1,000 nodes.

Measured twice: the pure ``plan`` function, and a full leader pass through the
SQLite state store (read the snapshot, plan, write every placement in a
fenced transaction).

    .venv/bin/python -m bench.planner
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from aether.core.scheduler import DesiredApp, NodeView, Place, plan
from bench.common import write_result

NODES = 1_000
APPS = 100
PER_APP = 100  # 100 apps x 100 instances = 10,000 instances


def _inputs() -> tuple[list[DesiredApp], list[NodeView]]:
    nodes = [NodeView(id=f"node-{i:04d}", cpus=16.0, memory_mb=65536) for i in range(NODES)]
    apps = [DesiredApp(app=f"app-{i:03d}", version=1, instances=PER_APP) for i in range(APPS)]
    return apps, nodes


def bench_pure(rounds: int = 5) -> dict[str, float]:
    apps, nodes = _inputs()
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        actions = plan(apps, nodes, [])
        elapsed = time.perf_counter() - start
        placed = sum(isinstance(a, Place) for a in actions)
        assert placed == APPS * PER_APP, placed
        rates.append(placed / elapsed)
    return {"placements_per_s_median": statistics.median(rates), "rounds": rounds}


async def _through_store(root: Path) -> dict[str, float]:
    from aether.model.app import AppSpec
    from aether.model.cluster import Blueprint, NodeCapabilities, NodeRecord
    from aether.server.leader.reconcile import apply_action
    from aether.server.services.cluster import dump, read_snapshot
    from aether.store.election import LeaderElection
    from aether.store.sqlite import SqliteStateStore

    store = await SqliteStateStore.open(root / "state.db")
    lease = await store.lease_grant(600)
    for i in range(NODES):
        caps = NodeCapabilities(cpus=16, memory_mb=65536, drivers=["process"])
        record = NodeRecord(id=f"node-{i:04d}", capabilities=caps, router_url="http://x")
        await store.put(f"nodes/node-{i:04d}", dump(record), lease=lease)
    for i in range(APPS):
        spec = AppSpec(name=f"app-{i:03d}", start="true")
        bp = Blueprint(
            app=spec.name,
            tenant="t",
            deployment_id=f"d{i}",
            version=1,
            digest="sha256:" + "0" * 64,
            spec=spec,
            instances=PER_APP,
        )
        await store.put(f"blueprints/{spec.name}", dump(bp))

    election = LeaderElection(store, key="leader", candidate="bench", ttl=600)
    leadership = await election.campaign()

    start = time.perf_counter()
    snap = await read_snapshot(store)
    actions = plan(snap.desired(), snap.node_views(), snap.instance_views())
    fence = leadership.fence()
    for action in actions:
        await apply_action(store, snap, action, fence)
    elapsed = time.perf_counter() - start
    placed = len((await store.range("instances/"))[0])
    await election.resign()
    await store.close()
    assert placed == APPS * PER_APP, placed
    return {"placements_per_s": placed / elapsed, "seconds": elapsed}


def main() -> None:
    pure = bench_pure()
    with tempfile.TemporaryDirectory() as tmp:
        stored = asyncio.run(_through_store(Path(tmp)))
    write_result(
        "planner",
        {
            "command": ".venv/bin/python -m bench.planner",
            "instances": APPS * PER_APP,
            "nodes": NODES,
            "pure_placements_per_s": round(pure["placements_per_s_median"]),
            "sqlite_store_placements_per_s": round(stored["placements_per_s"]),
            "sqlite_store_seconds": round(stored["seconds"], 2),
            "aim_pure_placements_per_s": 50_000,
        },
    )


if __name__ == "__main__":
    main()

"""Planner throughput: placements per second for 10,000 instances on 1,000 nodes.

Measured as the pure ``plan`` function, then as a full leader pass (read the
snapshot, plan, write every placement fenced by the leadership) through:

- the SQLite state store, batched (``apply_actions``: up to 1,024 operations
  per transaction) and one transaction per placement (``apply_action``);
- a real 3-member etcd cluster the bench starts on free loopback ports (data on
  tmpfs, etcd's default ``--max-txn-ops`` of 128), batched, and a 1-member one
  for comparison;
- etcd one transaction per placement, on the first ``--unbatched`` placements
  only (10,000 single transactions would take a minute).

    .venv/bin/python -m bench.planner [--apps 100] [--unbatched 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aether.core.scheduler import DesiredApp, NodeView, Place, plan
from aether.model.app import AppSpec
from aether.model.cluster import Blueprint, NodeCapabilities, NodeRecord
from aether.server.leader.reconcile import apply_action, apply_actions
from aether.server.services.cluster import dump, read_snapshot
from aether.store.base import Put, StateStore
from aether.store.election import LeaderElection
from aether.store.etcd import EtcdStateStore
from aether.store.etcd_local import EtcdCluster
from aether.store.sqlite import SqliteStateStore
from bench.common import machine_busy, write_result

NODES = 1_000
APPS = 100
PER_APP = 100  # 100 apps x 100 instances = 10,000 instances


def _inputs(apps: int) -> tuple[list[DesiredApp], list[NodeView]]:
    nodes = [NodeView(id=f"node-{i:04d}", cpus=16.0, memory_mb=65536) for i in range(NODES)]
    desired = [DesiredApp(app=f"app-{i:03d}", version=1, instances=PER_APP) for i in range(apps)]
    return desired, nodes


def bench_pure(apps: int, rounds: int = 5) -> dict[str, float]:
    desired, nodes = _inputs(apps)
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        actions = plan(desired, nodes, [])
        elapsed = time.perf_counter() - start
        placed = sum(isinstance(a, Place) for a in actions)
        assert placed == apps * PER_APP, placed
        rates.append(placed / elapsed)
    return {"placements_per_s_median": statistics.median(rates), "rounds": rounds}


async def _seed(store: StateStore, apps: int) -> None:
    """1,000 node records (on one lease) and ``apps`` blueprints, written in batches."""
    lease = await store.lease_grant(600)
    puts: list[Put] = []
    for i in range(NODES):
        caps = NodeCapabilities(cpus=16, memory_mb=65536, drivers=["process"])
        record = NodeRecord(id=f"node-{i:04d}", capabilities=caps, router_url="http://x")
        puts.append(Put(f"nodes/node-{i:04d}", dump(record), lease=lease))
    for i in range(apps):
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
        puts.append(Put(f"blueprints/{spec.name}", dump(bp)))
    step = store.max_txn_ops
    for start in range(0, len(puts), step):
        await store.txn([], puts[start : start + step])


def _cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) used so far by this process and the processes ``pids``."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


async def leader_pass(
    store: StateStore, apps: int, *, batched: bool, limit: int = 0, pids: list[int] | None = None
) -> dict[str, Any]:
    """Seed, then time one leader pass: snapshot, plan, fenced writes.

    ``limit``: write only the first ``limit`` actions (0: all of them). ``pids``:
    the etcd members, whose CPU time during the pass is counted with the bench's
    (on a shared machine, CPU seconds say more than wall-clock seconds).
    """
    pids = pids or []
    await _seed(store, apps)
    election = LeaderElection(store, key="leader", candidate="bench", ttl=600)
    leadership = await election.campaign()
    try:
        cpu = _cpu_seconds(pids)
        start = time.perf_counter()
        snap = await read_snapshot(store)
        actions = plan(snap.desired(), snap.node_views(), snap.instance_views())
        if limit:
            actions = actions[:limit]
        planned = time.perf_counter()
        fence = leadership.fence()
        transactions = len(actions)
        if batched:
            outcome = await apply_actions(store, snap, actions, fence)
            assert not outcome.deposed
            transactions = outcome.transactions
        else:
            for action in actions:
                await apply_action(store, snap, action, fence)
        end = time.perf_counter()
        cpu = _cpu_seconds(pids) - cpu
        placed = len((await store.range("instances/"))[0])
    finally:
        await election.resign()
    assert placed == len(actions), (placed, len(actions))
    return {
        "placements": placed,
        "placements_per_s": round(placed / (end - start)),
        "seconds": round(end - start, 3),
        "snapshot_and_plan_seconds": round(planned - start, 3),
        "write_placements_per_s": round(placed / (end - planned)),
        "transactions": transactions,
        "cpu_seconds": round(cpu, 3),
        "placements_per_cpu_s": round(placed / cpu) if cpu else None,
    }


async def _sqlite(root: Path, apps: int, *, batched: bool) -> dict[str, Any]:
    store = await SqliteStateStore.open(root / f"state-{batched}.db")
    try:
        return await leader_pass(store, apps, batched=batched)
    finally:
        await store.close()


async def _etcd(cluster: EtcdCluster, prefix: str, apps: int, **how: Any) -> dict[str, Any]:
    store = await EtcdStateStore.open(cluster.endpoints, prefix=prefix, timeout=30)
    pids = [m.process.pid for m in cluster.members if m.process is not None]
    try:
        return await leader_pass(store, apps, pids=pids, **how)
    finally:
        await store.close()


def bench_etcd(members: int, apps: int, unbatched: int) -> dict[str, Any]:
    with EtcdCluster(size=members) as cluster:
        result: dict[str, Any] = {
            "batched": asyncio.run(_etcd(cluster, "batched/", apps, batched=True)),
            "max_txn_ops": 128,
        }
        if unbatched:
            result["one_txn_per_placement"] = asyncio.run(
                _etcd(cluster, "single/", apps, batched=False, limit=unbatched)
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--apps", type=int, default=APPS, help="apps of 100 instances each")
    parser.add_argument(
        "--unbatched", type=int, default=1_000, help="placements written one txn each (0: skip)"
    )
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    args = parser.parse_args()
    busy = machine_busy(1.0)
    pure = bench_pure(args.apps)
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_batched = asyncio.run(_sqlite(Path(tmp), args.apps, batched=True))
        sqlite_single = asyncio.run(_sqlite(Path(tmp), args.apps, batched=False))
    etcd3 = bench_etcd(3, args.apps, args.unbatched)
    etcd1 = bench_etcd(1, args.apps, 0)
    command = ".venv/bin/python -m bench.planner"
    if args.apps != APPS or args.unbatched != 1_000:
        command += f" --apps {args.apps} --unbatched {args.unbatched}"
    result = {
        "command": command,
        "instances": args.apps * PER_APP,
        "nodes": NODES,
        "machine_busy_before": round(busy, 3),
        "pure_placements_per_s": round(pure["placements_per_s_median"]),
        "sqlite_store_placements_per_s": sqlite_batched["placements_per_s"],
        "sqlite_store_seconds": sqlite_batched["seconds"],
        "sqlite": {"batched": sqlite_batched, "one_txn_per_placement": sqlite_single},
        "etcd_3_members_placements_per_s": etcd3["batched"]["placements_per_s"],
        "etcd_3_members": etcd3,
        "etcd_1_member_placements_per_s": etcd1["batched"]["placements_per_s"],
        "etcd_1_member": etcd1,
        "aim_pure_placements_per_s": 50_000,
        "aim_etcd_3_members_placements_per_s": 5_000,
    }
    if args.no_write:
        import json

        print(json.dumps(result, indent=2))
    else:
        write_result("planner", result)


if __name__ == "__main__":
    main()

"""State-store write throughput through Aether: the etcd backend against the SQLite one.

    .venv/bin/python -m bench.store_bench [--ops N]

Both backends run in the same process and the same run, through the same
``StateStore`` calls the server makes: single puts one at a time (latency),
puts from 32 concurrent writers (throughput), and compare-and-swap
transactions (the leader's fenced writes: compare a revision, put). etcd is a
real three-member cluster of Debian's ``etcd-server`` on loopback; both keep
their data on /dev/shm, so neither pays for a disk flush (a real etcd fsyncs
its WAL on every write: on disks expect it lower).

A second peer separates Aether's cost from the transport's: the same puts sent
one at a time straight to etcd's JSON gateway with a bare ``httpx.AsyncClient``
(no StateStore code at all), to the member the store used, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from aether.store import EtcdStateStore, SqliteStateStore, StateStore
from aether.store.base import Compare, Put
from bench.common import summary, write_result
from tests.support.etcd import EtcdCluster

VALUE = b"x" * 512  # about the size of an instance record


async def _sequential(store: StateStore, ops: int, prefix: str) -> dict[str, Any]:
    latencies = []
    start = time.perf_counter()
    for i in range(ops):
        began = time.perf_counter()
        await store.put(f"{prefix}/seq/{i}", VALUE)
        latencies.append(time.perf_counter() - began)
    elapsed = time.perf_counter() - start
    stats = summary([x * 1000 for x in latencies])
    return {"ops_per_s": round(ops / elapsed, 1), "latency_ms": _round(stats)}


async def _concurrent(store: StateStore, ops: int, prefix: str, writers: int = 32) -> float:
    async def writer(w: int) -> None:
        for i in range(ops // writers):
            await store.put(f"{prefix}/par/{w}/{i}", VALUE)

    start = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return round((ops // writers) * writers / (time.perf_counter() - start), 1)


async def _cas(store: StateStore, ops: int, prefix: str) -> float:
    key = f"{prefix}/cas"
    await store.put(key, VALUE)
    start = time.perf_counter()
    for _ in range(ops):
        kv = await store.get(key)
        assert kv is not None
        result = await store.txn(
            [Compare(key, "mod_revision", "==", kv.mod_revision)], [Put(key, VALUE)]
        )
        assert result.succeeded
    return round(ops / (time.perf_counter() - start), 1)


async def _raw_gateway(endpoint: str, ops: int, prefix: str) -> float:
    """Sequential puts to etcd's JSON gateway with bare httpx: the transport's own ceiling."""
    value = base64.b64encode(VALUE).decode()
    async with httpx.AsyncClient() as client:
        start = time.perf_counter()
        for i in range(ops):
            key = base64.b64encode(f"{prefix}/raw/{i}".encode()).decode()
            response = await client.post(f"{endpoint}/v3/kv/put", json={"key": key, "value": value})
            response.raise_for_status()
        return round(ops / (time.perf_counter() - start), 1)


def _round(stats: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in stats.items()}


async def _measure(open_store: Callable[[], Awaitable[StateStore]], ops: int) -> dict[str, Any]:
    store = await open_store()
    try:
        prefix = f"bench-{os.getpid()}-{time.time_ns()}"
        sequential = await _sequential(store, ops, prefix)
        return {
            "sequential_put": sequential,
            "concurrent_put_ops_per_s": await _concurrent(store, ops, prefix),
            "cas_txn_ops_per_s": await _cas(store, ops // 2, prefix),
        }
    finally:
        await store.close()


async def run(ops: int) -> None:
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        sqlite = await _measure(lambda: SqliteStateStore.open(Path(tmp) / "state.db"), ops)
    cluster = EtcdCluster(size=3).start()
    try:
        etcd = await _measure(lambda: EtcdStateStore.open(cluster.endpoints), ops)
        raw = await _raw_gateway(
            cluster.endpoints[0], ops, f"bench-raw-{os.getpid()}-{time.time_ns()}"
        )
    finally:
        cluster.stop()
    ratios = {
        "sequential_put": round(
            etcd["sequential_put"]["ops_per_s"] / sqlite["sequential_put"]["ops_per_s"], 3
        ),
        "concurrent_put": round(
            etcd["concurrent_put_ops_per_s"] / sqlite["concurrent_put_ops_per_s"], 3
        ),
        "cas_txn": round(etcd["cas_txn_ops_per_s"] / sqlite["cas_txn_ops_per_s"], 3),
    }
    through_store = round(etcd["sequential_put"]["ops_per_s"] / raw, 3)
    write_result(
        "state_store_writes",
        {
            "command": f".venv/bin/python -m bench.store_bench --ops {ops}",
            "what": "writes through aether's StateStore: 512-byte puts one at a time, from 32 "
            "concurrent writers, and compare-and-swap transactions (get + txn)",
            "storage": "both on /dev/shm (no disk flush); etcd: 3 members on loopback",
            "sqlite": sqlite,
            "etcd_3_members": etcd,
            "ratio_etcd_to_sqlite": ratios,
            "raw_gateway_sequential_put_ops_per_s": raw,
            "ratio_store_to_raw_gateway_sequential_put": through_store,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=2000)
    asyncio.run(run(parser.parse_args().ops))


if __name__ == "__main__":
    main()

"""Claim latency with 10⁶ finished tasks stored, against an empty table (SQL queue).

Issue 18's aim: a claim costs the same with 10⁶ finished tasks as with none
(within 1.2x), because claims read ``ix_tasks_ready``, an index over ready tasks
only. Measured in-process on the ``SqlTaskQueue`` over SQLite and PostgreSQL (a
real server the benchmark starts): one ready task submitted, claimed and
completed, ``ROUNDS`` times, with the table empty, then again after 10⁶ finished
tasks are bulk-inserted into the same queue. The Redis backend's figure comes
from ``bench.queue_bench``.

    .venv/bin/python -m bench.claim_scale [--finished N] [--backend sqlite|postgres|all]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from aether.model.tasks import TaskState
from aether.store.records import open_records, upgrade_schema
from aether.store.records.schema import Task, Tenant
from aether.tasks.queue.base import NewTask, utc
from aether.tasks.queue.sql import SqlTaskQueue, next_seq
from bench.common import percentile, write_result

ROUNDS = 300
CHUNK = 20_000


async def _claims(queue: SqlTaskQueue, rounds: int) -> dict[str, float]:
    took = []
    for _ in range(rounds):
        await queue.submit("t", NewTask(type="vm:execute", queue="bench"))
        start = time.perf_counter()
        (task,) = await queue.claim_many(
            "n1", node="n1", drivers=["bwrap"], queues=["bench"], lease=30, limit=1
        )
        took.append(time.perf_counter() - start)
        await queue.complete(task.id, "n1", {})
    ms = [t * 1000 for t in took]
    return {
        "p50_ms": round(statistics.median(ms), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "rounds": rounds,
    }


async def _fill(queue: SqlTaskQueue, finished: int) -> float:
    """Bulk-insert ``finished`` succeeded tasks into the benchmark's queue."""
    start = time.perf_counter()
    stamp = utc(time.time())
    for lo in range(0, finished, CHUNK):
        rows: list[dict[str, Any]] = [
            {
                "id": uuid.uuid4().hex,
                "seq": next_seq(),
                "tenant_id": "t",
                "type": "vm:execute",
                "payload": {},
                "queue": "bench",
                "priority": 5,
                "max_retry": 3,
                "timeout": 300.0,
                "run_at": stamp,
                "idempotency_key": None,
                "state": TaskState.SUCCEEDED,
                "attempts": 1,
                "result": {},
                "error": None,
                "node": None,
                "driver": None,
                "claimed_by": "n1",
                "lease_expires_at": None,
                "created_at": stamp,
                "updated_at": stamp,
                "started_at": stamp,
                "finished_at": stamp,
            }
            for _ in range(min(CHUNK, finished - lo))
        ]
        async with queue.engine.begin() as conn:
            await conn.execute(insert(Task), rows)
    async with queue.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.exec_driver_sql("ANALYZE tasks")
        else:
            await conn.exec_driver_sql("ANALYZE")
    return time.perf_counter() - start


async def _measure(url: str, finished: int) -> dict[str, Any]:
    upgrade_schema(url)
    engine, sessions = open_records(url)
    try:
        async with sessions() as session:
            session.add(Tenant(id="t", name="t", created_at=utc(time.time())))
            await session.commit()
        queue = SqlTaskQueue(sessions)
        await _claims(queue, 20)  # warm: connections, statement caches
        empty = await _claims(queue, ROUNDS)
        fill_s = await _fill(queue, finished)
        full = await _claims(queue, ROUNDS)
    finally:
        await engine.dispose()
    return {
        "empty": empty,
        "finished_tasks": finished,
        "fill_s": round(fill_s, 1),
        "full": full,
        "ratio_p50": round(full["p50_ms"] / empty["p50_ms"], 3),
        "ratio_p95": round(full["p95_ms"] / empty["p95_ms"], 3),
    }


def bench_sqlite(finished: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(_measure(f"sqlite:///{Path(tmp) / 'records.db'}", finished))


def bench_postgres(finished: int) -> dict[str, Any]:
    from tests.support.postgres import PostgresServer

    with PostgresServer.launched() as server:
        return asyncio.run(_measure(server.create_database("claims"), finished))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.claim_scale", description=__doc__)
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "all"), default="all")
    args = parser.parse_args()
    data: dict[str, Any] = {"command": "python -m bench.claim_scale"}
    if args.backend in ("sqlite", "all"):
        data["sqlite"] = bench_sqlite(args.finished)
        print("sqlite", data["sqlite"], flush=True)
    if args.backend in ("postgres", "all"):
        data["postgres"] = bench_postgres(args.finished)
        print("postgres", data["postgres"], flush=True)
    write_result("claim_scale", data)


if __name__ == "__main__":
    main()

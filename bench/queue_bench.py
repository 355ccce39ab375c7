"""The task queue's hot paths in-process (no server, no node): what batching buys and
what a pile of finished tasks costs a claim.

    .venv/bin/python -m bench.queue_bench redis [--tasks N] [--batch B] [--finished N]

- ``redis``: ``RedisTaskQueue`` on a real ``redis-server`` (no persistence, loopback)
  that this script starts. ``--tasks`` tasks (default 2,000, the burst of
  ``bench.tasks_bench``) are submitted, then claimed and completed by one worker
  one at a time (``claim`` + ``complete``: two round trips a task) and, on a fresh
  queue, in batches of ``--batch`` (default 8, a node's slots: ``claim_many`` +
  ``complete_many``: two round trips a batch). Submission is timed too: one
  ``submit`` per task against one ``submit_many`` for the burst. Then a single
  ``claim``'s cost with no finished task and with ``--finished`` (default 10⁶)
  finished ones (submitted, claimed and completed through the queue, in batches
  of 1,000; the first samples leave their own 500 behind), as the client's
  latency and as the server's time per claim script: the ready sets hold only
  ready tasks, so the two should match. 10⁶ finished tasks take about 1.6 GB of
  Redis memory (the task hashes and their event log).

Figures go to bench/results/queue.json, one section per backend (a run replaces
only its own section).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aether.model.tasks import TaskState
from aether.tasks.queue.base import Completion, NewTask
from aether.tasks.queue.redis import RedisTaskQueue
from bench.common import RESULTS, machine_busy, summary, write_result
from tests.support.redis import redis_server

RESULT_NAME = "queue"
TENANT = "bench"
DRIVERS = ("bwrap", "process")  # a node's usual drivers: 6 ready sets per queue to look at
LEASE = 300.0
FILL_CHUNK = 1_000  # finished tasks made per submit_many / claim_many / complete_many
LATENCY_SAMPLES = 500


def _specs(n: int) -> list[NewTask]:
    return [
        NewTask(type="vm:execute", payload={"command": "echo", "args": [str(i)]}) for i in range(n)
    ]


async def _timed(step: Callable[[], Awaitable[object]]) -> float:
    began = time.perf_counter()
    await step()
    return time.perf_counter() - began


async def _one_by_one(queue: RedisTaskQueue, tasks: int) -> int:
    done = 0
    while (
        got := await queue.claim("w", node="n", drivers=DRIVERS, queues=["default"], lease=LEASE)
    ) is not None:
        await queue.complete(got.id, "w", {"exit_code": 0})
        done += 1
    assert done == tasks, f"completed {done} of {tasks}"
    return done


async def _in_batches(queue: RedisTaskQueue, tasks: int, batch: int) -> int:
    done = 0
    while got := await queue.claim_many(
        "w", node="n", drivers=DRIVERS, queues=["default"], lease=LEASE, limit=batch
    ):
        answers = await queue.complete_many(
            "w", [Completion(t.id, {"exit_code": 0}, t.attempts) for t in got]
        )
        done += sum(1 for a in answers if not isinstance(a, Exception))
    assert done == tasks, f"completed {done} of {tasks}"
    return done


async def _claim_latencies(queue: RedisTaskQueue, samples: int) -> dict[str, Any]:
    """``claim`` of one of ``samples`` freshly submitted ready tasks, one at a time: the
    client's milliseconds per call, and the server's microseconds per claim script (from
    ``INFO commandstats``, which a busy client machine disturbs less). The claimed tasks
    are completed afterwards, so only finished tasks are left behind."""
    await queue.submit_many(TENANT, _specs(samples))
    await queue.redis.config_resetstat()
    latencies, claimed = [], []
    for _ in range(samples):
        began = time.perf_counter()
        got = await queue.claim("w", node="n", drivers=DRIVERS, queues=["default"], lease=LEASE)
        latencies.append((time.perf_counter() - began) * 1000)
        assert got is not None
        claimed.append(got)
    scripts = (await queue.redis.info("commandstats"))["cmdstat_evalsha"]
    await queue.complete_many("w", [Completion(t.id, {}, t.attempts) for t in claimed])
    return {
        "client_ms": {k: round(v, 3) for k, v in summary(latencies).items()},
        "server_us_per_claim": round(float(scripts["usec_per_call"]), 1),
    }


async def _finish(queue: RedisTaskQueue, n: int) -> None:
    """Make ``n`` finished tasks the ordinary way, ``FILL_CHUNK`` at a time."""
    left = n
    while left > 0:
        chunk = min(FILL_CHUNK, left)
        await queue.submit_many(TENANT, _specs(chunk))
        got = await queue.claim_many(
            "filler", node="n", drivers=DRIVERS, queues=["default"], lease=LEASE, limit=chunk
        )
        await queue.complete_many("filler", [Completion(t.id, {}, t.attempts) for t in got])
        left -= len(got)


async def redis_claims(url: str, *, tasks: int, batch: int, finished: int) -> dict[str, Any]:
    """The Redis backend's figures (see the module docstring), on the server at ``url``."""
    queue = RedisTaskQueue(url)
    try:
        await queue.redis.flushall()
        submit_each = await _timed(lambda: _submit_each(queue, tasks))
        serial = await _timed(lambda: _one_by_one(queue, tasks))
        await queue.redis.flushall()
        submit_batch = await _timed(lambda: queue.submit_many(TENANT, _specs(tasks)))
        batched = await _timed(lambda: _in_batches(queue, tasks, batch))

        await queue.redis.flushall()
        empty = await _claim_latencies(queue, LATENCY_SAMPLES)
        fill = await _timed(lambda: _finish(queue, finished))
        memory = await queue.redis.info("memory")
        full = await _claim_latencies(queue, LATENCY_SAMPLES)
        stats = await queue.stats()
    finally:
        await queue.close()
    return {
        "tasks": tasks,
        "batch": batch,
        "submit_per_s": {
            "one_by_one": round(tasks / submit_each),
            "submit_many": round(tasks / submit_batch),
        },
        "claim_complete_per_s": {
            "one_by_one": round(tasks / serial),
            f"batches_of_{batch}": round(tasks / batched),
            "speedup": round(serial / batched, 2),
        },
        "claim_latency": {
            "finished_0": empty,
            f"finished_{finished}": full,
            "client_median_ratio": round(
                full["client_ms"]["median"] / empty["client_ms"]["median"], 2
            ),
            "server_ratio": round(full["server_us_per_claim"] / empty["server_us_per_claim"], 2),
        },
        "fill_s": round(fill, 1),
        "succeeded_in_store": stats[TaskState.SUCCEEDED],
        "redis_used_memory_mb": round(int(memory["used_memory"]) / 2**20),
    }


async def _submit_each(queue: RedisTaskQueue, tasks: int) -> None:
    for spec in _specs(tasks):
        await queue.submit(TENANT, spec)


def _save(section: str, figures: dict[str, Any]) -> None:
    """Replace one backend's section of bench/results/queue.json, keeping the others."""
    path = RESULTS / f"{RESULT_NAME}.json"
    kept = {}
    if path.exists():
        old = json.loads(path.read_text())
        kept = {k: v for k, v in old.get("sections", {}).items() if k != section}
    write_result(RESULT_NAME, {"sections": {**kept, section: figures}})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backend", choices=["redis"])
    parser.add_argument("--tasks", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--finished", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    busy = round(machine_busy(), 3)
    with (
        tempfile.TemporaryDirectory(prefix="queue-bench-") as workdir,
        redis_server(Path(workdir)) as url,
    ):
        figures = asyncio.run(
            redis_claims(url, tasks=args.tasks, batch=args.batch, finished=args.finished)
        )
    _save(args.backend, {"machine_busy_before": busy, **figures})


if __name__ == "__main__":
    main(sys.argv[1:])

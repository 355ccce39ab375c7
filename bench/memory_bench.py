"""Agent memory on SQLite: write rate, and text and vector search latency over 10k items.

    .venv/bin/python -m bench.memory_bench [--items 10000] [--dims 256] [--searches 50]

One records database (SQLite, the migrations applied) in a temporary directory and the
memory store as the API uses it, in one process. ``--items`` memories of one agent
(sentences drawn from a fixed vocabulary, seeded) are written one transaction each,
with a vector of ``--dims`` float32 from an in-process embedder (a hashed bag of
words, like the scripted model server's: the embedding model's own time is not
measured). Then ``--searches`` queries in each mode: ``text`` (FTS5, ``bm25()``) and
``vector`` (cosine in plain Python over every memory in scope). Results:
bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aether.agents.memory import memory_store
from aether.store.records import Records, open_records, upgrade_schema
from bench.common import percentile, write_result

WORDS = [
    "deploy",
    "node",
    "disk",
    "full",
    "cache",
    "warm",
    "cold",
    "restart",
    "rollback",
    "database",
    "backup",
    "nightly",
    "latency",
    "spike",
    "router",
    "tenant",
    "quota",
    "invoice",
    "release",
    "branch",
    "build",
    "test",
    "flaky",
    "queue",
    "worker",
    "lease",
    "timeout",
    "retry",
    "memory",
    "leak",
    "cpu",
    "throttle",
    "network",
    "partition",
    "leader",
    "etcd",
    "postgres",
    "index",
    "vacuum",
    "snapshot",
    "migrate",
    "drain",
    "scale",
    "replica",
    "shard",
    "token",
    "audit",
]


class HashEmbedder:
    """Each word hashed to a signed dimension, the sum normalized (no model call)."""

    def __init__(self, dims: int) -> None:
        self.dims = dims

    @property
    def name(self) -> str:
        return f"bench:hash{self.dims}"

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return [self._one(text) for text in texts]

    def _one(self, text: str) -> list[float]:
        vector = [0.0] * self.dims
        for word in text.lower().split():
            digest = hashlib.sha256(word.encode()).digest()
            sign = 1.0 if digest[4] & 1 else -1.0
            vector[int.from_bytes(digest[:4], "big") % self.dims] += sign
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        return [x / norm for x in vector]


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20)))


def _ms(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(samples) * 1000, 2),
        "p95_ms": round(percentile(samples, 95) * 1000, 2),
    }


async def bench(items: int, dims: int, searches: int) -> dict[str, Any]:
    rng = random.Random(17)
    embedder = HashEmbedder(dims)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'records.db'}"
        upgrade_schema(url)
        engine, sessions = open_records(url)
        try:
            tenant = (await Records(sessions).ensure_tenant("bench")).id
            store = memory_store(sessions)
            began = time.perf_counter()
            for _ in range(items):
                await store.write(tenant, "agt_bench", None, _sentence(rng), embedder=embedder)
            write_s = time.perf_counter() - began
            timings: dict[str, list[float]] = {"text": [], "vector": []}
            for _ in range(searches):
                query = " ".join(rng.choice(WORDS) for _ in range(3))
                for mode in ("text", "vector"):
                    started = time.perf_counter()
                    hits = await store.search(
                        tenant, "agt_bench", query, limit=10, mode=mode, embedder=embedder
                    )
                    timings[mode].append(time.perf_counter() - started)
                    assert hits, (mode, query)
            size = (Path(tmp) / "records.db").stat().st_size
        finally:
            await engine.dispose()
    return {
        "items": items,
        "dims": dims,
        "writes_per_s": round(items / write_s),
        "text_search": _ms(timings["text"]),
        "vector_search": _ms(timings["vector"]),
        "database_mb": round(size / 1e6, 1),
        "load_average_1m": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--searches", type=int, default=50)
    args = parser.parse_args()
    write_result("memory", asyncio.run(bench(args.items, args.dims, args.searches)))


if __name__ == "__main__":
    main()

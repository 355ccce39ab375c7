"""A node's task worker in this process, claiming an agent's run queue: the part of
``aether node`` that drives agents' runs and runs their sandbox tools (real bwrap
sandboxes), without starting a whole node. In its own thread and event loop, so sync
tests (the CLI's) and async ones use it alike."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from aether.client import ApiClient
from aether.node.drivers import sandbox_drivers
from aether.node.tasks import TaskWorker

__all__ = ["agent_worker"]


@contextlib.contextmanager
def agent_worker(
    base_url: str, node_token: str, node: str, root: Path, *agent_ids: str, concurrency: int = 8
) -> Iterator[TaskWorker]:
    """Node ``node``'s task worker on the default queue and each agent's queue."""
    loop = asyncio.new_event_loop()
    client = ApiClient(base_url, node_token)
    worker = TaskWorker(
        client,
        node,
        root / node,
        dict(sandbox_drivers()),
        concurrency=concurrency,
        queues=("default", *(f"agent.{a}" for a in agent_ids)),
    )
    stop = asyncio.Event()

    async def main() -> None:
        job = asyncio.create_task(worker.run())
        await stop.wait()
        running = [job, *worker.running.values()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await client.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)

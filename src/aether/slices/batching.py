"""Gathering single calls into batches for a ``@batch`` entry point.

Calls wait until ``max_size`` of them are waiting or the first has waited
``max_wait_ms``; the entry point then gets the list of their arguments and answers a
list of results, one per call. Each caller gets its own result, or the batch's error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aether.slices.authoring import BatchSpec

__all__ = ["BatchMismatch", "Batcher"]


class BatchMismatch(Exception):
    """The entry point answered a batch with a different number of results."""


class Batcher:
    def __init__(self, run: Callable[[list[Any]], Awaitable[list[Any]]], spec: BatchSpec) -> None:
        self._run = run
        self._spec = spec
        self._items: list[Any] = []
        self._waiters: list[asyncio.Future[Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self._items.append(item)
        self._waiters.append(waiter)
        if len(self._items) >= self._spec.max_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._spec.max_wait_ms / 1000, self._flush)
        return await waiter

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._items:
            return
        items, waiters = self._items, self._waiters
        self._items, self._waiters = [], []
        task = asyncio.get_running_loop().create_task(self._run_batch(items, waiters))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run_batch(self, items: list[Any], waiters: list[asyncio.Future[Any]]) -> None:
        try:
            results = await self._run(items)
            if not isinstance(results, list) or len(results) != len(items):
                got = len(results) if isinstance(results, list) else type(results).__name__
                raise BatchMismatch(f"a batch of {len(items)} answered with {got} results")
        except BaseException as exc:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for waiter, result in zip(waiters, results, strict=True):
            if not waiter.done():
                waiter.set_result(result)

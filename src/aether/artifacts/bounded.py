"""Run an async call over many items with a cap on how many run at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

__all__ = ["bounded_map"]

_T = TypeVar("_T")
_R = TypeVar("_R")


async def bounded_map(
    limit: int, items: Sequence[_T], call: Callable[[_T], Awaitable[_R]]
) -> list[_R]:
    """``[await call(x) for x in items]`` with at most ``limit`` calls running at once.

    The first failure cancels the calls still running and is raised.
    """
    results: list[_R | None] = [None] * len(items)
    todo = iter(enumerate(items))

    async def worker() -> None:
        for i, item in todo:
            results[i] = await call(item)

    tasks = [asyncio.create_task(worker()) for _ in range(min(max(limit, 1), len(items)))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return results  # type: ignore[return-value]  # every slot was filled

"""The newest row of each polled event source, read once per server for every stream.

The event stream (``GET /api/v1/events``) learns of new deployment events,
decisions, risk assessments and task state changes by their increasing ids.
Rather than each open stream polling four tables every half second (an idle
console then costs queries all the same), one reader per server polls their
newest ids while any stream waits, and wakes the streams whose position a new
row has passed; only those read the rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["EventHeads", "Heads", "Seen", "passed"]

#: newest id of (deployment events, decisions, risk assessments, task state changes)
Heads = tuple[int, int, int, int]
#: a stream's position in each of those sources; None: a source it does not wait on
Seen = tuple[int | None, int | None, int | None, int | None]


def passed(heads: Heads, seen: Seen) -> bool:
    """Whether a source has a row past the position seen in it."""
    return any(p is not None and h > p for h, p in zip(heads, seen, strict=True))


class EventHeads:
    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.reads = 0  # how many times the heads were read (for tests and curiosity)
        self._heads: Heads | None = None
        self._error: BaseException | None = None
        self._changed = asyncio.Condition()
        self._waiters = 0
        self._reader: asyncio.Task[None] | None = None

    async def wait_past(self, read: Callable[[], Awaitable[Heads]], seen: Seen) -> None:
        """Return once a source has a row past ``seen``.

        ``read`` reads the heads; the first waiter starts the reader, which stops when
        no one waits. A failed read fails every waiter (the stream ends; clients resume).
        """
        self._waiters += 1
        try:
            if self._reader is None or self._reader.done():
                self._error = None
                self._reader = asyncio.create_task(self._run(read), name="event heads")
            async with self._changed:
                await self._changed.wait_for(lambda: self._error is not None or self._new(seen))
                if self._error is not None and not self._new(seen):
                    raise self._error
        finally:
            self._waiters -= 1

    def _new(self, seen: Seen) -> bool:
        return self._heads is not None and passed(self._heads, seen)

    async def _run(self, read: Callable[[], Awaitable[Heads]]) -> None:
        while self._waiters > 0:
            try:
                heads = await read()
                self.reads += 1
            except Exception as exc:
                async with self._changed:
                    self._error = exc
                    self._changed.notify_all()
                return
            async with self._changed:
                self._heads = heads
                self._changed.notify_all()
            await asyncio.sleep(self.interval)

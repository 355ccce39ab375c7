"""In-process wake-ups for long polls: a waiter on an object (a run, a task) is woken
as soon as this server changes it. Waiters also poll, for changes made by another
server, so a missed or foreign change costs at most their poll interval."""

from __future__ import annotations

import asyncio
import contextlib
import weakref

__all__ = ["Signals"]


class Signals:
    """Per id, an event for any change and one for a settling change (an end, or a
    wait for a person). An id nobody waits on holds nothing (weak references)."""

    def __init__(self) -> None:
        self._changed: weakref.WeakValueDictionary[str, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )
        self._settled: weakref.WeakValueDictionary[str, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )

    def notify(self, key: str, *, settled: bool = False) -> None:
        for events in (self._changed, self._settled) if settled else (self._changed,):
            event = events.pop(key, None)
            if event is not None:
                event.set()

    async def wait(self, key: str, timeout: float, *, settled: bool = False) -> None:
        """Until ``key`` changes here (settles, with ``settled``), or ``timeout`` seconds."""
        events = self._settled if settled else self._changed
        event = events.get(key)
        if event is None:
            event = events[key] = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()

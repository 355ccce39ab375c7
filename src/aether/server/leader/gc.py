"""The leader's garbage collector: one :func:`~aether.server.services.gc.collect_garbage`
pass every ``gc_interval`` seconds while this server leads."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aether.server.context import ServerContext
from aether.server.services.gc import collect_garbage
from aether.store.election import Leadership

__all__ = ["GarbageCollector"]

log = logging.getLogger("aether.gc")


class GarbageCollector:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def run(self, leadership: Leadership) -> None:
        """The leader loop: the first pass one interval after election, not at once."""
        while not leadership.lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ctx.settings.gc_interval):
                    await leadership.lost.wait()
            if leadership.lost.is_set():
                return
            try:
                await collect_garbage(self.ctx)
            except Exception:
                log.exception("garbage collection failed; trying again later")

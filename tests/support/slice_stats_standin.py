"""A stand-in slice instance for telemetry tests: a real frame server on a real port.

It speaks ``aether.slices.wire`` (the ``MAGIC`` preface, then length-prefixed JSON
frames, multiplexed) and answers only the control entries telemetry uses, with
the control key: ``$stats`` (the counters set by the test, then reset, as the
host does) and ``$snapshot`` (kept, so a test reads what its node delivered).
A call without the right key is ``not_found``, as the host answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aether.node.slice_control import SliceControl
from aether.slices import wire

__all__ = ["StatsStandin", "stats_standin"]


@dataclass
class StatsStandin:
    host: str
    port: int
    key: str
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # the next $stats answer
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # every $snapshot received
    calls: list[str] = field(default_factory=list)  # entries called, in order
    delay: float = 0.0  # seconds before answering $stats (a slow instance)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def control(self, cluster_name: str, tenant: str) -> SliceControl:
        """What a runner exposes of this instance while ACTIVE (``runner.slice_control``)."""
        return SliceControl(
            host=self.host, port=self.port, key=self.key, app=cluster_name, tenant=tenant
        )

    def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        entry = str(message.get("entry"))
        self.calls.append(entry)
        if message.get("key") != self.key or entry not in ("$stats", "$snapshot"):
            error = {"code": "not_found", "message": f"no entry point {entry!r}"}
            return {"id": message.get("id"), "ok": False, "error": error}
        if entry == "$stats":
            taken, self.stats = self.stats, {}
            return {"id": message.get("id"), "ok": True, "result": taken}
        self.snapshots.append(message.get("kwargs", {}).get("snapshot"))
        return {"id": message.get("id"), "ok": True, "result": None}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if await reader.readexactly(len(wire.MAGIC)) != wire.MAGIC:
                return
            while (message := await wire.read_frame(reader)) is not None:
                if message.get("entry") == "$stats" and self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(wire.encode(self.answer(message)))
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def stats_standin(key: str = "control-key") -> AsyncIterator[StatsStandin]:
    """A stand-in listening on a free port of 127.0.0.1 while the block runs."""
    standin = StatsStandin("127.0.0.1", 0, key)
    server = await asyncio.start_server(standin.serve, "127.0.0.1", 0)
    standin.port = server.sockets[0].getsockname()[1]
    try:
        yield standin
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()

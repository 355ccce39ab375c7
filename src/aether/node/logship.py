"""Ships instance output to the server, so ``aether logs`` works from anywhere.

Every half second the shipper sends what each instance wrote since the last push. An
instance's last lines go out before the node reports it FAILED (``flush``): once the
leader has replaced a failed instance the node no longer runs its app, and the server
refuses that app's lines. A refused app's lines are dropped, never resent forever: one
refused app must not hold back every other app's output on the node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from aether.client import ApiClient
from aether.errors import AetherError, ForbiddenError

if TYPE_CHECKING:
    from aether.node.runner import InstanceRunner

__all__ = ["LogShipper"]

log = logging.getLogger("aether.node.logs")

MAX_CHUNK = 64 << 10

Entry = dict[str, str]


class LogShipper:
    def __init__(
        self,
        client: ApiClient,
        node_id: str,
        runners: Mapping[str, InstanceRunner],
        interval: float = 0.5,
    ) -> None:
        self.client = client
        self.node_id = node_id
        self.runners = runners
        self.interval = interval
        self.offsets: dict[Path, int] = {}
        self._lock = asyncio.Lock()  # one push at a time: offsets move in order

    def collect(
        self, runners: Iterable[InstanceRunner] | None = None
    ) -> list[tuple[Entry, Path, int]]:
        """What each runner's log has past its offset (whole lines, at most MAX_CHUNK),
        with the offset the log reaches once the entry is accepted."""
        found: list[tuple[Entry, Path, int]] = []
        for runner in list(self.runners.values()) if runners is None else runners:
            path = runner.log_path
            offset = self.offsets.get(path, 0)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size < offset:
                offset = 0
            if size == offset:
                continue
            with path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read(min(size - offset, MAX_CHUNK))
            cut = chunk.rfind(b"\n") + 1 if len(chunk) < MAX_CHUNK else len(chunk)
            if cut == 0:
                continue
            record = runner.record
            entry = {
                "tenant": record.tenant,
                "app": record.app,
                "label": f"v{record.version}/{record.n}",
                "text": chunk[:cut].decode("utf-8", "replace"),
            }
            found.append((entry, path, offset + cut))
        return found

    async def ship(self, runners: Iterable[InstanceRunner] | None = None) -> bool:
        """Push what the runners (all of them by default) wrote since the last push;
        whether anything was done with (sent or dropped). Lines the server could not take
        for a passing reason (unreachable, busy) are sent again next time; an app's lines
        it refuses are dropped with a warning."""
        async with self._lock:
            found = self.collect(runners)
            if not found:
                return False
            try:
                await self.client.push_logs(self.node_id, [entry for entry, _, _ in found])
            except ForbiddenError:
                return await self._ship_each_app(found)  # which was refused: push apart
            except AetherError as exc:
                log.debug("log push failed (%s); will resend", exc)
                return False
            self.offsets.update((path, end) for _, path, end in found)
            return True

    async def _ship_each_app(self, found: list[tuple[Entry, Path, int]]) -> bool:
        apps: dict[tuple[str, str], list[tuple[Entry, Path, int]]] = {}
        for item in found:
            apps.setdefault((item[0]["tenant"], item[0]["app"]), []).append(item)
        moved = False
        for (_, app), items in apps.items():
            try:
                await self.client.push_logs(self.node_id, [entry for entry, _, _ in items])
            except ForbiddenError as exc:
                dropped = sum(len(entry["text"]) for entry, _, _ in items)
                log.warning("logs of app %s refused (%s): %d bytes dropped", app, exc, dropped)
                self.offsets.update((path, end) for _, path, end in items)
                moved = True
                continue
            except AetherError as exc:
                log.debug("log push failed (%s); will resend", exc)
                continue
            self.offsets.update((path, end) for _, path, end in items)
            moved = True
        return moved

    async def flush(self, runner: InstanceRunner, chunks: int = 16) -> None:
        """Ship one instance's output now, up to ``chunks`` pushes of MAX_CHUNK (before
        the node reports it FAILED)."""
        for _ in range(chunks):
            if not await self.ship([runner]):
                return

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.ship()

"""Ships instance output to the server, so ``aether logs`` works from anywhere."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from aether.client import ApiClient
from aether.errors import AetherError

if TYPE_CHECKING:
    from aether.node.runner import InstanceRunner

__all__ = ["LogShipper"]

log = logging.getLogger("aether.node.logs")

MAX_CHUNK = 64 << 10


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

    def collect(self) -> tuple[list[dict[str, str]], dict[Path, int]]:
        entries: list[dict[str, str]] = []
        new_offsets: dict[Path, int] = {}
        for runner in list(self.runners.values()):
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
            entries.append(
                {
                    "tenant": record.tenant,
                    "app": record.app,
                    "label": f"v{record.version}/{record.n}",
                    "text": chunk[:cut].decode("utf-8", "replace"),
                }
            )
            new_offsets[path] = offset + cut
        return entries, new_offsets

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            entries, new_offsets = self.collect()
            if not entries:
                continue
            try:
                await self.client.push_logs(self.node_id, entries)
            except AetherError as exc:
                log.debug("log push failed (%s); will resend", exc)
                continue
            self.offsets.update(new_offsets)

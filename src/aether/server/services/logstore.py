"""App logs shipped by nodes, kept per app in files on the server."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = ["LogStore"]


class LogStore:
    """One append-only file per tenant and app, rotated once at ``max_bytes``."""

    def __init__(self, root: Path, *, max_bytes: int = 10 << 20) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._changed: dict[Path, asyncio.Condition] = defaultdict(asyncio.Condition)

    def path(self, tenant_id: str, app: str) -> Path:
        return self.root / tenant_id / f"{app}.log"

    async def append(self, tenant_id: str, app: str, label: str, text: str) -> None:
        path = self.path(tenant_id, app)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = text.splitlines()
        if not lines:
            return
        data = "".join(f"[{label}] {line}\n" for line in lines).encode("utf-8", "replace")
        if path.exists() and path.stat().st_size + len(data) > self.max_bytes:
            os.replace(path, path.with_suffix(".log.1"))
        with path.open("ab") as fh:
            fh.write(data)
        cond = self._changed[path]
        async with cond:
            cond.notify_all()

    def tail(self, tenant_id: str, app: str, lines: int) -> tuple[list[str], int]:
        """The last ``lines`` lines and the offset the file ended at."""
        path = self.path(tenant_id, app)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return [], 0
        text = data.decode("utf-8", "replace").splitlines()
        return text[-lines:] if lines > 0 else [], len(data)

    async def follow(self, tenant_id: str, app: str, offset: int) -> AsyncIterator[str]:
        """Lines appended after ``offset``, as they arrive, until cancelled."""
        path = self.path(tenant_id, app)
        cond = self._changed[path]
        while True:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size < offset:  # rotated
                offset = 0
            if size > offset:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read(size - offset)
                cut = chunk.rfind(b"\n") + 1
                offset += cut
                for line in chunk[:cut].decode("utf-8", "replace").splitlines():
                    yield line
                continue
            async with cond:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cond.wait(), timeout=1.0)

"""The leader's plugin host: the cluster's plugins of one kind, loaded from the records,
evaluated off the event loop.

:meth:`PluginHost.load` reads the names, kinds and digests every ``refresh``
seconds (a cheap query) and fetches a module's bytes only when its digest is
new; :meth:`PluginHost.evaluate` runs a batch of (plugin, input) pairs in a
worker thread (:class:`~aether.plugins.wasm.WasmRunner`, which never raises),
so a slow plugin holds up neither the API nor the other loops beyond its
deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from aether.core.plugin_abi import PluginLimits, PluginOutcome
from aether.plugins.wasm import LoadedPlugin, WasmRunner, shared_runner
from aether.store.records.schema import PluginRow

__all__ = ["PluginHost", "PluginSource", "loaded"]

log = logging.getLogger("aether.plugins")

REFRESH_SECONDS = 2.0


class PluginSource(Protocol):
    """What the host reads from the records."""

    async def plugin_digests(self) -> list[tuple[str, str, str]]: ...

    async def get_plugin(self, name: str) -> PluginRow: ...


def loaded(row: PluginRow) -> LoadedPlugin:
    return LoadedPlugin(
        name=row.name,
        version=row.version,
        kind=row.kind,
        sha256=row.sha256,
        wasm=row.wasm,
        limits=PluginLimits(
            fuel=row.fuel, memory_bytes=row.memory_bytes, deadline_ms=row.deadline_ms
        ),
    )


class PluginHost:
    def __init__(
        self,
        records: PluginSource,
        kind: str,
        *,
        runner: WasmRunner | None = None,
        refresh: float = REFRESH_SECONDS,
    ) -> None:
        self.records = records
        self.kind = kind
        self.runner = runner or shared_runner()
        self.refresh = refresh
        self._plugins: dict[str, LoadedPlugin] = {}
        self._loaded_at: float | None = None

    def invalidate(self) -> None:
        """Read the records again at the next :meth:`load`."""
        self._loaded_at = None

    async def load(self) -> list[LoadedPlugin]:
        """The plugins of this host's kind, by name (read again every ``refresh`` s)."""
        clock = time.monotonic()
        if self._loaded_at is not None and clock - self._loaded_at < self.refresh:
            return list(self._plugins.values())
        try:
            digests = await self.records.plugin_digests()
        except Exception:
            log.exception("reading the plugins failed; keeping the ones loaded")
            return list(self._plugins.values())
        plugins: dict[str, LoadedPlugin] = {}
        for name, kind, digest in digests:
            if kind != self.kind:
                continue
            known = self._plugins.get(name)
            if known is not None and known.sha256 == digest:
                plugins[name] = known
                continue
            try:
                plugins[name] = loaded(await self.records.get_plugin(name))
            except Exception:
                log.info("plugin %s went away while loading it", name)
        self._plugins = plugins
        self._loaded_at = clock
        return list(plugins.values())

    def run_all(self, batch: Sequence[tuple[LoadedPlugin, bytes]]) -> list[PluginOutcome]:
        return [self.runner.run(plugin, payload) for plugin, payload in batch]

    async def evaluate(self, batch: Sequence[tuple[LoadedPlugin, bytes]]) -> list[PluginOutcome]:
        """Each (plugin, input)'s outcome, in order; in a worker thread."""
        if not batch:
            return []
        return await asyncio.to_thread(self.run_all, batch)

"""Control calls from a node to the slice instances it runs (``aether.slices.wire``).

A slice instance's host takes control calls (entries starting with ``$``) only with
its control key, which its node makes fresh for every start and hands to it alone
(``$AETHER_SLICE_CONTROL_KEY``). ``SliceControl`` is what node code needs to make
them; it never shows the key (not in its repr, not in a log line).

``describe`` asks a freshly started instance for its entry points (the runner
reports them with ACTIVE: one endpoint each); ``slice_tables`` turns the node's
endpoint cache into the per-tenant tables ``$endpoints`` pushes (``EndpointPusher``)
so the instances' handles resolve other slices without a lookup per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aether.model.cluster import Endpoint
from aether.model.names import split_cluster_name
from aether.slices.wire import CallFailed, Connection

__all__ = [
    "DESCRIBE_TIMEOUT",
    "EndpointPusher",
    "SliceControl",
    "SliceTable",
    "describe",
    "slice_tables",
]

log = logging.getLogger("aether.node.slices")

DESCRIBE_TIMEOUT = 10.0  # seconds a started instance has to describe itself
PUSH_TIMEOUT = 5.0  # seconds one $endpoints push may take

#: ``{SLICE: {ENTRY: [{"url", "node", "n"}, ...]}}``: one tenant's slices, by plain name
SliceTable = dict[str, dict[str, list[dict[str, Any]]]]


@dataclass(frozen=True, slots=True)
class SliceControl:
    """How to make control calls to one ACTIVE slice instance."""

    host: str
    port: int
    key: str = field(repr=False)
    app: str  # the cluster name (``catalog`` or ``catalog.{tenant}``)
    tenant: str  # the tenant's name (``model.names.split_cluster_name``)

    async def call(self, entry: str, kwargs: dict[str, Any], *, timeout: float) -> Any:
        """One control call on a connection of its own."""
        async with asyncio.timeout(timeout):
            conn = await Connection.open(self.host, self.port, timeout=timeout)
            try:
                return await conn.call(entry, kwargs=kwargs, key=self.key)
            finally:
                await conn.close()


async def describe(control: SliceControl) -> dict[str, dict[str, Any]]:
    """The instance's entry points (``$describe``'s ``entries``); ValueError if it
    cannot say (no answer, an error, or an answer without entry points)."""
    try:
        answer = await control.call("$describe", {}, timeout=DESCRIBE_TIMEOUT)
    except CallFailed as exc:
        raise ValueError(f"$describe failed ({exc.code}): {exc.message}") from None
    except (OSError, TimeoutError) as exc:
        raise ValueError(f"$describe got no answer: {exc or type(exc).__name__}") from None
    entries = answer.get("entries") if isinstance(answer, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ValueError("$describe named no entry points")
    if not all(isinstance(k, str) and isinstance(v, dict) for k, v in entries.items()):
        raise ValueError("$describe's entry points must map names to objects")
    return entries


def slice_tables(endpoints: Iterable[Endpoint]) -> dict[str, SliceTable]:
    """Tenant name → that tenant's slice endpoint table (sorted: equal input, equal table)."""
    tables: dict[str, SliceTable] = {}
    for ep in endpoints:
        if not ep.is_slice:
            continue
        name, tenant = split_cluster_name(ep.app)
        entries = tables.setdefault(tenant, {}).setdefault(name, {})
        point = {"url": ep.url, "node": ep.node, "n": ep.n, "idempotent": ep.idempotent}
        entries.setdefault(ep.entry, []).append(point)
    for table in tables.values():
        for entries in table.values():
            for points in entries.values():
                points.sort(key=lambda p: (p["url"], p["node"], p["n"]))
    return tables


class EndpointPusher:
    """Pushes ``$endpoints`` to a node's ACTIVE slice instances, fire and forget.

    ``sync`` is called with the instances' controls and the current tables whenever
    either may have changed; an instance gets a push when its table differs from the
    last one it was sent (a new start has a new key: it gets one too). One push per
    instance at a time: a newer table waiting replaces an older one not yet sent, so
    a burst of changes costs one push in flight and one after it.
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self._sent: dict[str, tuple[str, SliceTable]] = {}  # instance → (key, table) queued
        self._next: dict[str, tuple[SliceControl, SliceTable]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.pushes = 0  # pushes answered (for tests and debugging)

    def sync(self, controls: dict[str, SliceControl], tables: dict[str, SliceTable]) -> None:
        for instance in [i for i in self._sent if i not in controls]:
            del self._sent[instance]
            self._next.pop(instance, None)
        for instance, control in controls.items():
            table = tables.get(control.tenant, {})
            if self._sent.get(instance) == (control.key, table):
                continue
            self._sent[instance] = (control.key, table)
            self._next[instance] = (control, table)
            task = self._tasks.get(instance)
            if task is None or task.done():
                self._tasks[instance] = asyncio.create_task(
                    self._push(instance), name=f"endpoints {instance}"
                )

    async def _push(self, instance: str) -> None:
        while (item := self._next.pop(instance, None)) is not None:
            control, table = item
            try:
                await control.call(
                    "$endpoints", {"table": table, "node": self.node}, timeout=PUSH_TIMEOUT
                )
                self.pushes += 1
            except (CallFailed, OSError, TimeoutError) as exc:
                log.debug("%s: $endpoints not pushed: %s", instance, exc)
                if self._sent.get(instance) == (control.key, table):
                    del self._sent[instance]  # the next sync tries again

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

"""Handles: calling another slice from inside a slice.

``slices.get("cart")`` is a handle; ``await handle.total(cart_id="c1")`` calls the
entry point ``total`` on one of the slice's instances, chosen from the table the node
pushed to this host (``registry.REGISTRY``): an instance on this node first, then
round robin (or the least loaded, ``balance="least_in_flight"``, from the leader's
snapshot and this process's own calls in flight). One multiplexed
``wire.Connection`` per endpoint url is kept (and reopened when lost). The current
call's deadline and trace go with the call. A call that fails ``unavailable`` is
tried on the next instance (each at most once) when it is idempotent or was not
started; otherwise ``CallError`` is raised.

An entry point whose name a handle uses itself (``options``, ``call``) is called
with ``handle.call("options", ...)``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

from pydantic_core import to_jsonable_python

from aether.slices import wire
from aether.slices.context import DEADLINE, TRACE
from aether.slices.errors import CallError
from aether.slices.registry import REGISTRY, Balance, Endpoint, in_flight_of, order_endpoints

__all__ = ["Handle", "get"]

_UNSET: Any = object()
CONNECT_TIMEOUT = 2.0


class _Pool:
    """One connection per endpoint url, for the running event loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: dict[str, wire.Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def in_flight(self, url: str) -> int:
        connection = self._connections.get(url)
        return 0 if connection is None or connection.closed else connection.in_flight

    async def connection(self, url: str) -> wire.Connection:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._connections, self._locks = loop, {}, {}
        connection = self._connections.get(url)
        if connection is not None and not connection.closed:
            return connection
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            connection = self._connections.get(url)
            if connection is None or connection.closed:
                if connection is not None:
                    await connection.close()
                parts = urlsplit(url)
                if parts.hostname is None or parts.port is None:
                    raise wire.CallFailed("unavailable", f"bad endpoint url {url!r}", sent=False)
                try:
                    connection = await wire.Connection.open(
                        parts.hostname, parts.port, timeout=CONNECT_TIMEOUT
                    )
                except (OSError, TimeoutError) as exc:
                    raise wire.CallFailed(
                        "unavailable", f"cannot connect to {url}: {exc}", sent=False
                    ) from None
                self._connections[url] = connection
            return connection

    async def retain(self, urls: set[str]) -> None:
        """Close the connections to endpoints no longer in the table."""
        for url in [url for url in self._connections if url not in urls]:
            connection = self._connections.pop(url)
            if connection.in_flight == 0:
                await connection.close()
            else:  # let its calls finish first
                task = asyncio.get_running_loop().create_task(_close_when_idle(connection))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        connections, self._connections = self._connections, {}
        for connection in connections.values():
            await connection.close()


async def _close_when_idle(connection: wire.Connection) -> None:
    while connection.in_flight and not connection.closed:
        await asyncio.sleep(0.1)
    await connection.close()


POOL = _Pool()


def _started(exc: wire.CallFailed) -> bool:
    """Whether the instance may have run the call."""
    if not exc.sent:
        return False
    return not (isinstance(exc.details, dict) and exc.details.get("started") is False)


class Handle:
    def __init__(
        self,
        name: str,
        *,
        timeout: float | None = None,
        idempotent: bool | None = None,
        balance: Balance = "round_robin",
    ) -> None:
        self.name = name
        self._timeout = timeout
        self._idempotent = idempotent
        self._balance: Balance = balance

    def options(
        self,
        *,
        timeout: float | None = _UNSET,
        idempotent: bool | None = _UNSET,
        balance: Balance = _UNSET,
    ) -> Handle:
        """A handle like this one with some options changed: ``timeout`` (seconds, capped
        by the current call's deadline), ``idempotent`` (retry on another instance when
        the instance is lost; default: what the entry point declares), ``balance``
        (``round_robin`` or ``least_in_flight``)."""
        return Handle(
            self.name,
            timeout=self._timeout if timeout is _UNSET else timeout,
            idempotent=self._idempotent if idempotent is _UNSET else idempotent,
            balance=self._balance if balance is _UNSET else balance,
        )

    def __getattr__(self, entry: str) -> _Method:
        if entry.startswith("_"):
            raise AttributeError(entry)
        return _Method(self, entry)

    def __repr__(self) -> str:
        return f"<slice handle {self.name}>"

    async def call(self, entry: str, /, *args: Any, **kwargs: Any) -> Any:
        endpoints = REGISTRY.endpoints(self.name, entry)
        if not endpoints:
            raise CallError("no_endpoint", f"no instance of {self.name}.{entry} is known")
        deadline = DEADLINE.get()
        if self._timeout is not None:
            mine = time.time() + self._timeout
            deadline = mine if deadline is None else min(deadline, mine)
        order = self._order(entry, endpoints)
        idempotent = self._idempotent
        if idempotent is None:
            idempotent = bool(order[0].idempotent)
        payload_args = to_jsonable_python(list(args)) if args else None
        payload_kwargs = to_jsonable_python(kwargs) if kwargs else None
        trace = TRACE.get()
        last: wire.CallFailed | None = None
        for endpoint in order:
            if deadline is not None and deadline <= time.time():
                raise CallError("deadline_exceeded", f"{self.name}.{entry}: past the deadline")
            try:
                connection = await POOL.connection(endpoint.url)
                return await connection.call(
                    entry, payload_args, payload_kwargs, deadline=deadline, trace=trace
                )
            except wire.CallFailed as exc:
                if exc.code != "unavailable" or (_started(exc) and not idempotent):
                    raise CallError(exc.code, exc.message, exc.details) from None
                last = exc
        assert last is not None
        raise CallError(
            "unavailable", f"{self.name}.{entry}: no instance answered ({last.message})"
        )

    def _order(self, entry: str, endpoints: tuple[Endpoint, ...]) -> list[Endpoint]:
        load: dict[str, float] | None = None
        if self._balance == "least_in_flight":
            snapshot = REGISTRY.snapshot
            load = {
                ep.url: in_flight_of(snapshot, self.name, entry, ep.url) + POOL.in_flight(ep.url)
                for ep in endpoints
            }
        return order_endpoints(
            endpoints,
            node=REGISTRY.node,
            turn=REGISTRY.turn(self.name, entry),
            balance=self._balance,
            load=load,
        )


class _Method:
    __slots__ = ("_entry", "_handle")

    def __init__(self, handle: Handle, entry: str) -> None:
        self._handle = handle
        self._entry = entry

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await self._handle.call(self._entry, *args, **kwargs)


def get(name: str) -> Handle:
    """A handle on the slice ``name`` (its cluster name: ``cart``, or ``cart.{tenant}``)."""
    return Handle(name)

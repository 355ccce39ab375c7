"""A stand-in slice instance: a real TCP server speaking the slice wire protocol
(``aether.slices.wire``: ``MAGIC``, then length-prefixed JSON frames, multiplexed),
on its own thread and event loop, with a few entry points of fixed behaviour:

- ``add(a: int, b: int)`` → ``a + b`` (anything else: ``bad_request`` with
  pydantic-shaped ``details``);
- ``echo(*args, **kwargs)`` → ``{"who": NAME, "args": …, "kwargs": …}``;
- ``boom()`` → ``internal`` (the entry point raised);
- ``slow(seconds)`` → answers after ``seconds``;
- ``drain()`` → ``unavailable`` (the instance is draining);
- any other → ``not_found``.

``endpoint_value`` builds the state store's value of one of its entry points (with
the ``schema`` a node would copy from ``$describe``), so a test can make a slice
ACTIVE by writing its endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aether.slices.wire import MAGIC, encode, read_frame

__all__ = ["ENTRIES", "SliceStandIn", "endpoint_value", "slice_standin"]

_INT = {"type": "integer"}
ENTRIES: dict[str, dict[str, Any]] = {
    "add": {
        "params": {
            "type": "object",
            "properties": {"a": _INT, "b": _INT},
            "required": ["a", "b"],
        },
        "returns": _INT,
        "idempotent": True,
        "batch": None,
    },
    "echo": {"params": {"type": "object"}, "returns": {}, "idempotent": True, "batch": None},
    "boom": {"params": {"type": "object"}, "returns": {}, "idempotent": False, "batch": None},
    "slow": {"params": {"type": "object"}, "returns": {}, "idempotent": False, "batch": None},
    "drain": {"params": {"type": "object"}, "returns": {}, "idempotent": False, "batch": None},
}


class _Refused(Exception):
    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


def _int_problems(kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    problems = []
    for name in ("a", "b"):
        if name not in kwargs:
            problems.append({"type": "missing", "loc": [name], "msg": "Field required"})
        elif isinstance(kwargs[name], bool) or not isinstance(kwargs[name], int):
            problems.append(
                {
                    "type": "int_type",
                    "loc": [name],
                    "msg": "Input should be a valid integer",
                    "input": kwargs[name],
                }
            )
    return problems


@dataclass
class SliceStandIn:
    name: str
    host: str = "127.0.0.1"
    port: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _answer(self, call: dict[str, Any]) -> Any:
        entry, args, kwargs = call.get("entry"), call.get("args", []), call.get("kwargs", {})
        if entry == "add":
            if args:
                kwargs = {**dict(zip(("a", "b"), args, strict=False)), **kwargs}
            if problems := _int_problems(kwargs):
                raise _Refused("bad_request", "invalid arguments", problems)
            return kwargs["a"] + kwargs["b"]
        if entry == "echo":
            return {"who": self.name, "args": args, "kwargs": kwargs}
        if entry == "boom":
            raise _Refused("internal", "ZeroDivisionError: division by zero")
        if entry == "slow":
            await asyncio.sleep(float(kwargs.get("seconds", 5)))
            return "late"
        if entry == "drain":
            raise _Refused("unavailable", "draining")
        raise _Refused("not_found", f"no entry point {entry!r}")

    async def _one(self, call: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        self.calls.append(call)
        try:
            result = await self._answer(call)
            reply: dict[str, Any] = {"id": call["id"], "ok": True, "result": result}
        except _Refused as exc:
            error: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.details is not None:
                error["details"] = exc.details
            reply = {"id": call["id"], "ok": False, "error": error}
        with contextlib.suppress(ConnectionError):
            writer.write(encode(reply))
            await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks: set[asyncio.Task[None]] = set()
        try:
            if await reader.readexactly(len(MAGIC)) != MAGIC:
                return
            while (call := await read_frame(reader)) is not None:
                task = asyncio.create_task(self._one(call, writer))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            writer.close()


def endpoint_value(app: str, entry: str, node: str, n: int, url: str, *, version: int = 1) -> bytes:
    """The value of ``endpoints/{app}/{entry}/{node}:{n}`` for a stand-in's entry point."""
    return json.dumps(
        {
            "app": app,
            "entry": entry,
            "node": node,
            "n": n,
            "version": version,
            "url": url,
            "schema": ENTRIES.get(entry),
        }
    ).encode()


@contextlib.contextmanager
def slice_standin(name: str = "standin") -> Iterator[SliceStandIn]:
    """A running stand-in instance on a free port of 127.0.0.1."""
    standin = SliceStandIn(name)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    server: asyncio.Server | None = None

    async def start() -> None:
        nonlocal server
        server = await asyncio.start_server(standin._serve, standin.host, 0)
        standin.port = server.sockets[0].getsockname()[1]
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True, name=f"slice-{name}")
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    started.wait(10)
    try:
        yield standin
    finally:

        async def stop() -> None:
            if server is not None:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 2)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

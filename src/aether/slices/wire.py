"""The slice wire protocol: how routers, nodes and handles call a slice instance.

Every slice instance listens on one TCP port (``$PORT``). A connection that starts
with the four bytes ``MAGIC`` speaks frames; anything else is HTTP, of which the
host answers only ``GET /healthz`` (the node's health check).

A frame is a 4-byte big-endian length and that many bytes of one UTF-8 JSON
object (at most ``MAX_FRAME``). Calls are multiplexed: a connection carries any
number of calls at once, each answered by ``id``, in any order.

- call: ``{"id": 7, "entry": "charge", "args": [...], "kwargs": {...},
  "deadline": 1767225600.25 | null, "trace": "…" | null, "key": "…"?}``
  (``deadline``: unix seconds after which the caller no longer waits; ``key``:
  only on control calls, see below)
- answer: ``{"id": 7, "ok": true, "result": …}`` or
  ``{"id": 7, "ok": false, "error": {"code": …, "message": …, "details"?: …}}``

Error codes (``CODES``, the API's envelope codes, so a router passes them on):
``bad_request`` (the arguments failed validation; ``details`` are pydantic's
errors), ``not_found`` (no such entry point), ``deadline_exceeded``,
``unavailable`` (the instance is draining or not active: try another; such a
refusal carries ``details`` ``{"started": false}``, so a caller knows the call did
not run and may send it elsewhere even when it is not idempotent),
``internal`` (the entry point raised; ``message`` names the exception).

Control entries start with ``$`` and need ``key``, the instance's control key
(``$AETHER_SLICE_CONTROL_KEY``, handed to the host by its node alone):
``$describe`` (the slice's name and entry points with their JSON schemas),
``$endpoints`` (the node pushes the tenant's endpoint table), ``$snapshot``
(the leader's cluster snapshot, via the node), ``$stats`` (per entry point
counters since the last ``$stats``), ``$activate`` and ``$deactivate`` (run the
slice's hook; ``$deactivate`` first drains the calls in flight; both answer
``{"state": …}``). A control call without the right key is answered ``not_found``,
as an unknown entry point would be.

This module is the codec and the client side (``Connection``: the calls made in
one event loop iteration go out in one write); it imports only the standard
library, because it runs inside slice sandboxes too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import struct
import time
from typing import Any

__all__ = [
    "CODES",
    "MAGIC",
    "MAX_FRAME",
    "CallFailed",
    "Connection",
    "decode",
    "encode",
    "read_frame",
]

MAGIC = b"AESL"
MAX_FRAME = 16 * 1024 * 1024
CODES = frozenset({"bad_request", "not_found", "deadline_exceeded", "unavailable", "internal"})
_LENGTH = struct.Struct(">I")


class CallFailed(Exception):
    """A call answered with an error, or lost with its connection (``code``
    ``unavailable`` and ``sent`` telling whether the instance may have run it)."""

    def __init__(self, code: str, message: str, details: Any = None, *, sent: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.sent = sent


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":"), default=str).encode()
    if len(body) > MAX_FRAME:
        raise ValueError(f"frame of {len(body)} bytes is over {MAX_FRAME}")
    return _LENGTH.pack(len(body)) + body


def decode(body: bytes) -> dict[str, Any]:
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError("a frame must hold a JSON object")
    return message


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next frame's object, or None at a clean end of stream."""
    try:
        head = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ConnectionError("stream ended inside a frame header") from None
        return None
    (length,) = _LENGTH.unpack(head)
    if length > MAX_FRAME:
        raise ConnectionError(f"frame of {length} bytes is over {MAX_FRAME}")
    return decode(await reader.readexactly(length))


class Connection:
    """One multiplexed frame connection to a slice instance (client side)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._closed: BaseException | None = None
        self._unsent: list[bytes] = []  # frames of this loop iteration, written together
        self._loop = asyncio.get_running_loop()
        self._pump = self._loop.create_task(self._read_answers())

    @classmethod
    async def open(cls, host: str, port: int, *, timeout: float = 5.0) -> Connection:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_FRAME + 4)
        writer.write(MAGIC)
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    async def call(
        self,
        entry: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        deadline: float | None = None,
        trace: str | None = None,
        key: str | None = None,
    ) -> Any:
        """The entry point's result; ``CallFailed`` for an error answer or a lost call."""
        if self._closed is not None:
            raise CallFailed("unavailable", f"connection closed: {self._closed}", sent=False)
        call_id = next(self._ids)
        message: dict[str, Any] = {
            "id": call_id,
            "entry": entry,
            "args": args or [],
            "kwargs": kwargs or {},
            "deadline": deadline,
            "trace": trace,
        }
        if key is not None:
            message["key"] = key
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = answer
        try:
            frame = encode(message)
            if not self._unsent:
                self._loop.call_soon(self._write_unsent)
            self._unsent.append(frame)
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            try:
                async with asyncio.timeout(timeout):
                    reply = await answer
            except TimeoutError:
                raise CallFailed(
                    "deadline_exceeded", f"{entry}: no answer by the deadline"
                ) from None
        finally:
            self._waiting.pop(call_id, None)
        if reply.get("ok"):
            return reply.get("result")
        error = reply.get("error") or {}
        raise CallFailed(
            str(error.get("code", "internal")),
            str(error.get("message", "the call failed")),
            error.get("details"),
        )

    def _write_unsent(self) -> None:
        unsent, self._unsent = self._unsent, []
        if self._closed is None and unsent:
            self._writer.write(unsent[0] if len(unsent) == 1 else b"".join(unsent))

    async def _read_answers(self) -> None:
        try:
            while (reply := await read_frame(self._reader)) is not None:
                waiter = self._waiting.get(reply.get("id", -1))
                if waiter is not None and not waiter.done():
                    waiter.set_result(reply)
            self._fail(ConnectionError("the instance closed the connection"))
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            self._fail(exc)

    def _fail(self, why: BaseException) -> None:
        self._closed = why
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(CallFailed("unavailable", f"connection lost: {why}"))
        self._writer.close()

    async def close(self) -> None:
        if self._closed is None:
            self._fail(ConnectionError("closed by the caller"))
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await self._pump
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

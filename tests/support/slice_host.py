"""A stand-in slice host: a real asyncio server speaking ``aether.slices.wire``.

It plays ``python -m aether.slices.host`` (docs/slices.md) for the node, router and
server tests, as the fake LLM servers play a provider: one TCP port, ``MAGIC``
sniffed per connection (frames) or HTTP (only ``GET /healthz``), control calls
checked against the control key. Its slice is fixed (``ENTRIES``):

- ``price(sku: str) -> int`` (idempotent): ``len(sku)``; a non-string ``sku`` is
  ``bad_request`` with pydantic-shaped ``details``;
- ``whoami() -> str`` (idempotent): the host's ``name``;
- ``charge(amount: int) -> int``: not idempotent;
- ``slow(seconds: float) -> float``: sleeps (deadlines);
- ``boom()``: raises (``internal``);
- ``tables() -> list``: the ``$endpoints`` tables it was pushed, oldest first.

Run in-process (``SliceHost(...).start()``) or as a program (``python3 slice_host.py``,
with ``PORT``, ``AETHER_SLICE_HOST``, ``AETHER_SLICE_CONTROL_KEY``, and
``STANDIN_FAIL=1`` to fail as an import error does: a traceback, exit 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import Any

from aether.slices.wire import MAGIC, encode, read_frame

__all__ = ["ENTRIES", "SliceHost"]

_INT = {"type": "integer"}
_STR = {"type": "string"}


def _schema(params: dict[str, Any], returns: dict[str, Any], idempotent: bool) -> dict[str, Any]:
    return {
        "params": {"type": "object", "properties": params, "required": sorted(params)},
        "returns": returns,
        "idempotent": idempotent,
        "batch": None,
    }


ENTRIES: dict[str, dict[str, Any]] = {
    "price": _schema({"sku": _STR}, _INT, True),
    "whoami": _schema({}, _STR, True),
    "charge": _schema({"amount": _INT}, _INT, False),
    "slow": _schema({"seconds": {"type": "number"}}, {"type": "number"}, False),
    "boom": _schema({}, {"type": "null"}, False),
    "tables": _schema({}, {"type": "array"}, True),
}


class _Refused(Exception):
    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


class SliceHost:
    def __init__(self, name: str = "standin", *, key: str = "k") -> None:
        self.name = name
        self.key = key
        self.ready = True  # /healthz answers 200
        self.draining = False  # calls are answered "unavailable"
        self.tables: list[dict[str, Any]] = []
        self.calls: list[str] = []  # entry points called, in order
        self.server: asyncio.Server | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> SliceHost:
        self.server = await asyncio.start_server(self._serve, host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def kill(self) -> None:
        """Stop listening and cut every connection (as a killed process would)."""
        if self.server is not None:
            self.server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    # -- entry points -----------------------------------------------------------

    async def _entry(self, entry: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if entry not in ENTRIES:
            raise _Refused("not_found", f"no entry point {entry!r}")
        params = list(ENTRIES[entry]["params"]["properties"])
        given = dict(zip(params, args, strict=False)) | kwargs
        if entry == "price":
            sku = given.get("sku")
            if not isinstance(sku, str):
                raise _Refused(
                    "bad_request",
                    "1 validation error for price",
                    [
                        {
                            "loc": ["sku"],
                            "msg": "Input should be a valid string",
                            "type": "string_type",
                        }
                    ],
                )
            return len(sku)
        if entry == "whoami":
            return self.name
        if entry == "charge":
            return int(given.get("amount", 0))
        if entry == "slow":
            await asyncio.sleep(float(given.get("seconds", 0)))
            return float(given.get("seconds", 0))
        if entry == "tables":
            return self.tables
        raise RuntimeError("boom")

    async def _control(self, entry: str, kwargs: dict[str, Any]) -> Any:
        if entry == "$describe":
            return {"slice": self.name, "lean": False, "entries": ENTRIES}
        if entry == "$endpoints":
            self.tables.append(kwargs)
            return None
        if entry == "$stats":
            return {}
        raise _Refused("not_found", f"no control entry {entry!r}")

    async def _answer(self, message: dict[str, Any]) -> dict[str, Any]:
        call_id = message.get("id")
        entry = str(message.get("entry", ""))
        try:
            if entry.startswith("$"):
                if message.get("key") != self.key:
                    raise _Refused("not_found", "control calls need the control key")
                result = await self._control(entry, message.get("kwargs") or {})
            else:
                if self.draining:
                    raise _Refused("unavailable", "draining")
                self.calls.append(entry)
                deadline = message.get("deadline")
                left = None if deadline is None else float(deadline) - time.time()
                try:
                    async with asyncio.timeout(left):
                        result = await self._entry(
                            entry, message.get("args") or [], message.get("kwargs") or {}
                        )
                except TimeoutError:
                    raise _Refused("deadline_exceeded", f"{entry}: past its deadline") from None
        except _Refused as exc:
            error: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.details is not None:
                error["details"] = exc.details
            return {"id": call_id, "ok": False, "error": error}
        except Exception as exc:
            return {
                "id": call_id,
                "ok": False,
                "error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"},
            }
        return {"id": call_id, "ok": True, "result": result}

    # -- the port ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readexactly(len(MAGIC))
            if head == MAGIC:
                await self._frames(reader, writer)
            else:
                await self._http(head, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending: set[asyncio.Task[None]] = set()

        async def reply(message: dict[str, Any]) -> None:
            writer.write(encode(await self._answer(message)))

        try:
            while (message := await read_frame(reader)) is not None:
                task = asyncio.create_task(reply(message))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            for task in pending:
                task.cancel()

    async def _http(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        request = head + await reader.readuntil(b"\r\n\r\n")
        line = request.split(b"\r\n", 1)[0].decode(errors="replace")
        if line.startswith("GET /healthz "):
            status = "200 OK" if self.ready else "503 Service Unavailable"
        else:
            status = "404 Not Found"
        writer.write(
            f"HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode()
        )
        await writer.drain()


async def _main() -> None:
    if os.environ.get("STANDIN_FAIL"):
        raise ImportError(f"No module named {os.environ.get('AETHER_SLICE', 'x')!r} (stand-in)")
    host = SliceHost(
        os.environ.get("AETHER_INSTANCE_ID", "standin"),
        key=os.environ["AETHER_SLICE_CONTROL_KEY"],
    )
    await host.start(os.environ.get("AETHER_SLICE_HOST", "127.0.0.1"), int(os.environ["PORT"]))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    host.draining = True
    await host.kill()


if __name__ == "__main__":
    try:
        asyncio.run(_main())
    except ImportError:
        import traceback

        traceback.print_exc()
        sys.exit(1)

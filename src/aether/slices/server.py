"""The host's socket side: one TCP port that speaks frames (a connection starting
with ``wire.MAGIC``) and answers ``GET /healthz`` (anything else: HTTP).

An ``asyncio.Protocol``: frames are cut from the received bytes without a stream
reader; the answers ready in one loop iteration are written together, without
waiting for the transport to drain (it buffers; when it asks to pause, reading
pauses too, so a slow reader holds back its own calls only).
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from aether.slices import wire
from aether.slices.dispatch import Dispatcher

__all__ = ["SliceProtocol"]

_HTTP_LIMIT = 16 * 1024
_LENGTH = struct.Struct(">I")  # wire's frame header: the body's length, big-endian


class SliceProtocol(asyncio.Protocol):
    def __init__(self, dispatcher: Dispatcher, connections: set[SliceProtocol]) -> None:
        self._dispatcher = dispatcher
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._mode: str | None = None  # "frames" | "http"
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._flush()
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._mode is None:
            head = bytes(self._buffer[:4])
            if len(head) < 4 and wire.MAGIC.startswith(head):
                return
            if head == wire.MAGIC:
                self._mode = "frames"
                del self._buffer[:4]
            else:
                self._mode = "http"
        if self._mode == "frames":
            self._frames()
        else:
            self._http()

    # -- frames ----------------------------------------------------------------------

    def _frames(self) -> None:
        buffer = self._buffer
        start, end = 0, len(buffer)
        try:
            while end - start >= 4:
                (length,) = _LENGTH.unpack_from(buffer, start)
                if length > wire.MAX_FRAME:
                    raise ValueError(f"frame of {length} bytes is over {wire.MAX_FRAME}")
                if end - start - 4 < length:
                    break
                message = wire.decode(bytes(buffer[start + 4 : start + 4 + length]))
                start += 4 + length
                self._dispatcher.handle(message, self.send)
        except ValueError:  # not JSON, not an object, too long: the stream is lost
            self.close()
            return
        if start:
            del buffer[:start]

    def send(self, answer: dict[str, Any]) -> None:
        """Queue an answer; the answers of one loop iteration go out in one write."""
        if self._transport is None:
            return
        self._out.append(wire.encode(answer))
        if len(self._out) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        out, self._out = self._out, []
        transport = self._transport
        if transport is not None and not transport.is_closing() and out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    # -- HTTP (the health check) ---------------------------------------------------

    def _http(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _HTTP_LIMIT:
                self._answer_http(431, {"error": "request head too large"})
            return
        request_line = bytes(self._buffer[: self._buffer.find(b"\r\n")]).decode("latin-1")
        parts = request_line.split()
        if len(parts) >= 2 and parts[0] in ("GET", "HEAD") and parts[1].split("?")[0] == "/healthz":
            state = self._dispatcher.state
            self._answer_http(200 if state == "active" else 503, {"state": state})
        else:
            self._answer_http(404, {"error": "not found"})

    def _answer_http(self, status: int, body: dict[str, Any]) -> None:
        reason = {200: "OK", 404: "Not Found", 431: "Too Large", 503: "Service Unavailable"}
        payload = json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {status} {reason.get(status, '')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        if self._transport is not None:
            self._transport.write(head + payload)
            self._transport.close()
        self._buffer.clear()

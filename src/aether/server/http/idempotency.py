"""Idempotency-Key on every mutating API call, in one place: an ASGI middleware.

A ``POST``/``PUT``/``PATCH``/``DELETE`` under ``/api/v1/`` that carries an
``Idempotency-Key`` header runs once per (tenant, method, path, key). A repeat
with the same body gets the stored answer again, marked ``Idempotent-Replay:
true``, without running the handler; a repeat with a different body is a
``409 conflict``. Only successful (2xx) JSON answers are stored: a failed
call changed nothing, so running it again is safe. Concurrent repeats wait for
the first one and replay its answer instead of all running.

The body's fingerprint is the SHA-256 of its canonical JSON (key order does
not matter) for JSON bodies up to 1 MiB, and of the raw bytes otherwise; a
streamed artifact upload is identified by its ``X-Aether-Digest`` and length
instead of being held in memory (it is content-addressed anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aether.server.context import ServerContext

__all__ = ["IdempotencyMiddleware", "replay_body", "request_fingerprint", "request_key"]

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_BUFFER_LIMIT = 1 << 20
_SCOPE_WIDTH = 255  # the column is VARCHAR(255); PostgreSQL enforces it


def request_fingerprint(body: bytes, content_type: str) -> str:
    """SHA-256 of the canonical JSON of ``body`` (or of its bytes when it is not JSON)."""
    if content_type.startswith("application/json") and body:
        # not valid JSON: the handler will say so; hash what was sent
        with contextlib.suppress(ValueError):
            body = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(body).hexdigest()


_STATE_KEY = "idempotency_key"


def request_key(request: Request) -> str | None:
    """The request's scoped Idempotency-Key, or None without one.

    The middleware stores an answer only after the handler returned; a server that
    dies in between has done the work but kept no answer, so a retry would run the
    handler again. A handler that creates something (a deployment) stores this key
    on what it creates, in the same write, and returns that on a retry instead.
    """
    value = getattr(request.state, _STATE_KEY, None)
    return value if isinstance(value, str) else None


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in _MUTATING
            or not scope["path"].startswith("/api/v1/")
        ):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get("idempotency-key")
        if key is None:
            await self.app(scope, receive, send)
            return
        if not 1 <= len(key) <= 255:
            await _envelope(
                send, scope, 400, "bad_request", "Idempotency-Key must be 1 to 255 characters"
            )
            return
        ctx: ServerContext | None = getattr(scope["app"].state, "ctx", None)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        principal = None
        if ctx is not None and scheme.lower() == "bearer" and token.strip():
            principal = await ctx.records.authenticate(token.strip())
        if ctx is None or principal is None:
            await self.app(scope, receive, send)  # the route answers 401 in its envelope
            return

        length = int(headers.get("content-length") or 0)
        streamed = length > _BUFFER_LIMIT or headers.get("transfer-encoding") == "chunked"
        body = b""
        if streamed:
            fingerprint = hashlib.sha256(
                f"{headers.get('x-aether-digest', '')}:{length}".encode()
            ).hexdigest()
        else:
            body = await _read_body(receive)
            fingerprint = request_fingerprint(body, headers.get("content-type", ""))

        name = f"{scope['method']} {scope['path']} {key}"
        if len(name) > _SCOPE_WIDTH:
            name = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
        async with self._one_at_a_time((principal.tenant_id, name)):
            found = await ctx.records.get_idempotent(principal.tenant_id, name)
            if found is not None:
                if found.request_hash != fingerprint:
                    await _envelope(
                        send,
                        scope,
                        409,
                        "conflict",
                        "this Idempotency-Key was already used with a different request body; "
                        "use a new key for a new request",
                    )
                    return
                await _json(
                    send, found.status_code, found.response, [(b"idempotent-replay", b"true")]
                )
                return
            replay_receive = receive if streamed else replay_body(body, receive)
            captured = _Capture(send)
            # a handler whose effect must survive a crash before the answer is stored
            # records this with it (see ``request_key``)
            scope.setdefault("state", {})[_STATE_KEY] = name
            await self.app(scope, replay_receive, captured.send)
            if captured.storable():
                await ctx.records.save_idempotent(
                    principal.tenant_id, name, fingerprint, captured.status, captured.json()
                )

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, name: tuple[str, str]) -> AsyncIterator[None]:
        """A lock per key in this process, dropped when its last user leaves."""
        lock, users = self._locks.get(name, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users == 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)


class _Capture:
    """Passes the response through while keeping a copy of a small JSON answer."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0
        self._json_type = False
        self._chunks: list[bytes] = []
        self._size = 0

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            for name, value in message.get("headers", []):
                if name.lower() == b"content-type":
                    self._json_type = value.startswith(b"application/json")
        elif message["type"] == "http.response.body" and self._size <= _BUFFER_LIMIT:
            chunk = bytes(message.get("body", b""))
            self._size += len(chunk)
            self._chunks.append(chunk)
        await self._send(message)

    def storable(self) -> bool:
        return 200 <= self.status < 300 and self._json_type and self._size <= _BUFFER_LIMIT

    def json(self) -> Any:
        return json.loads(b"".join(self._chunks) or b"null")


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay_body(body: bytes, receive: Receive, *, more: bool = False) -> Receive:
    """A receive channel that yields ``body`` (already read) once, then the real channel.

    ``more``: the body was read only in part; the rest follows from ``receive``.
    """
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()  # later: the real channel, so disconnects are still seen

    return replay


async def _json(
    send: Send, status: int, payload: Any, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _envelope(send: Send, scope: Scope, status: int, code: str, message: str) -> None:
    trace = str(scope.get("state", {}).get("trace_id", ""))
    await _json(send, status, {"code": code, "message": message, "trace_id": trace})

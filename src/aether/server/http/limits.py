"""Bounded input at the edge: request ids, body sizes, and the token before the body.

One plain ASGI middleware, outermost, so it runs before the leader forwarding, the
telemetry fast path, the idempotency middleware and FastAPI's body parsing:

* the trace id is the caller's ``X-Request-Id`` only when it is 1 to 128 characters
  of ``[A-Za-z0-9._:-]``; anything else is replaced by a fresh id, so garbage never
  reaches the logs or the answer;
* a body is bounded per route (:func:`body_limit`): JSON bodies by
  ``AETHER_MAX_REQUEST_BYTES`` (1 MiB by default), uploads by their own larger
  limits. A ``Content-Length`` above the limit is answered ``413 payload_too_large``
  at once, before a byte of the body is read; a body without one (chunked) is
  counted as it is read and cut off at the limit with the same answer;
* a request under ``/api/`` that carries a body is authenticated here, before the
  body is read or parsed (``server.http.auth.authenticate``, the same check and the same
  messages as the routes), so malformed JSON without a valid token is a 401, not a
  400 that tells an anonymous caller how its body was parsed. The sign-in routes
  (``SIGN_IN_PATHS``), whose callers have no token yet, are the exception.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aether.errors import AetherError
from aether.server.http.auth import authenticate
from aether.server.http.request_id import request_id
from aether.server.settings import ServerSettings

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "MAX_ASSEMBLE_BODY_BYTES",
    "MAX_PUSH_BYTES",
    "NODE_REPORT_BYTES",
    "InputLimits",
    "body_limit",
    "request_id",
]

DEFAULT_MAX_REQUEST_BYTES = 1 << 20
#: Task results (stdout and stderr up to 1 MiB each, JSON-escaped) and log batches.
NODE_REPORT_BYTES = 16 << 20
#: Largest ``assemble`` body (the plan's JSON): ~250 bytes per entry at the entry limit.
MAX_ASSEMBLE_BODY_BYTES = 64 << 20
#: A node's metrics push: a push of thousands of instances is still far below this.
MAX_PUSH_BYTES = 4 << 20


#: routes that take a body from callers without a token: they sign in for one
SIGN_IN_PATHS = frozenset({"/api/v1/auth/login", "/api/v1/auth/oidc/exchange"})


def _upload_routes(settings: ServerSettings) -> list[tuple[str, re.Pattern[str], int]]:
    segment = r"[^/]+"
    return [
        ("POST", re.compile(r"/api/v1/artifacts"), settings.max_artifact_bytes),
        ("PUT", re.compile(rf"/api/v1/blobs/{segment}"), settings.max_artifact_bytes),
        ("POST", re.compile(r"/api/v1/snapshots"), settings.max_artifact_bytes),
        ("POST", re.compile(r"/api/v1/artifacts/assemble"), MAX_ASSEMBLE_BODY_BYTES),
        ("POST", re.compile(rf"/api/v1/nodes/{segment}/metrics"), MAX_PUSH_BYTES),
        ("POST", re.compile(rf"/api/v1/nodes/{segment}/logs"), NODE_REPORT_BYTES),
        ("POST", re.compile(rf"/api/v1/nodes/{segment}/diag/{segment}"), NODE_REPORT_BYTES),
        ("POST", re.compile(rf"/api/v1/tasks/{segment}/(complete|fail)"), NODE_REPORT_BYTES),
    ]


def body_limit(settings: ServerSettings) -> Callable[[str, str], int]:
    """``limit(method, path)``: the largest body this route accepts, in bytes."""
    routes = _upload_routes(settings)

    def limit(method: str, path: str) -> int:
        for route_method, pattern, size in routes:
            if method == route_method and pattern.fullmatch(path):
                return size
        return settings.max_request_bytes

    return limit


class _BodyTooLarge(HTTPException):
    """Raised from the receive channel: FastAPI re-raises HTTPExceptions from body parsing,
    routes that stream the body let it through, and the middleware answers it."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit))


def _too_large(limit: int) -> str:
    return (
        f"the request body exceeds this route's {limit}-byte limit; "
        "send less (see docs/api.md, 'Limits')"
    )


class InputLimits:
    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app = app
        self._limit = body_limit(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: int | None = None
        chunked = False
        trace_header: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"x-request-id":
                trace_header = value
        trace = request_id(trace_header)
        scope.setdefault("state", {})["trace_id"] = trace

        limit = self._limit(scope["method"], scope["path"])
        if length is not None and length > limit:
            await _answer(scope, receive, send, 413, "payload_too_large", _too_large(limit))
            return
        has_body = chunked or bool(length)
        if has_body and scope["path"].startswith("/api/") and scope["path"] not in SIGN_IN_PATHS:
            refused = await _authenticate(scope)
            if refused is not None:
                await _answer(scope, receive, send, refused.status, refused.code, refused.message)
                return

        started = False
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive if has_body else receive, watched_send)
        except _BodyTooLarge as exc:
            if started:
                raise
            await _answer(scope, receive, send, 413, "payload_too_large", str(exc.detail))


async def _authenticate(scope: Scope) -> AetherError | None:
    """The error ``authenticate`` raises for this request's token, or None when it passes
    (or cannot be checked here: then the route checks it as always)."""
    ctx = getattr(getattr(scope.get("app"), "state", None), "ctx", None)
    if ctx is None:
        return None
    try:
        await authenticate(Request(scope), ctx)
    except AetherError as exc:
        return exc
    except Exception:
        return None  # the records database is down, say: the route answers that in its envelope
    return None


async def _answer(
    scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str
) -> None:
    trace = scope["state"]["trace_id"]
    response = JSONResponse(
        {"code": code, "message": message, "trace_id": trace},
        status_code=status,
        headers={"X-Trace-Id": trace},
    )
    await response(scope, receive, send)

"""The API error envelope, in one place: ``{"code", "message", "trace_id"}``."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aether.errors import AetherError
from aether.server.http.request_id import request_id
from aether.store.base import StoreUnavailableError

__all__ = [
    "QUOTE_LIMIT",
    "bounded_message",
    "envelope",
    "install_error_handlers",
    "short",
    "trace_id_of",
]

log = logging.getLogger("aether.server")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    429: "rate_limited",
    503: "service_unavailable",
}


#: Longest quotation of the caller's input in an error message (a digest fits whole).
QUOTE_LIMIT = 80
#: Longest error message as a whole.
MESSAGE_LIMIT = 1024
# a Python repr of a string, as messages quote input with ``{value!r}``
_QUOTED = re.compile(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"")


def short(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, with "…" when it was longer."""
    return text if len(text) <= limit else text[:limit] + "…"


def bounded_message(message: str) -> str:
    """An error message whose quotations of input are short prefixes, and short itself.

    Messages quote what they reject (``app {name!r} not found``); a hostile caller
    must not get megabytes of its own input back, nor into the logs.
    """

    def cut(match: re.Match[str]) -> str:
        quoted = match.group(0)
        if len(quoted) <= QUOTE_LIMIT + 2:
            return quoted
        return quoted[: QUOTE_LIMIT + 1] + "…" + quoted[0]

    return short(_QUOTED.sub(cut, message), MESSAGE_LIMIT)


def trace_id_of(request: Request) -> str:
    trace = getattr(request.state, "trace_id", None)
    if trace is None:
        trace = request_id(request.headers.get("x-request-id"))
        request.state.trace_id = trace
    return str(trace)


def envelope(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: dict[str, object] | None = None,
) -> JSONResponse:
    trace = trace_id_of(request)
    return JSONResponse(
        {**(details or {}), "code": code, "message": bounded_message(message), "trace_id": trace},
        status_code=status,
        headers={"X-Trace-Id": trace},
    )


class _TraceMiddleware:
    """Gives every request a trace id (a well-formed ``X-Request-Id`` or a new one) and
    echoes it.

    A plain ASGI middleware, not ``BaseHTTPMiddleware``: it leaves the receive
    channel alone, so long polls still see a client disconnect.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        trace = state.get("trace_id")  # set by InputLimits, outermost
        if trace is None:
            trace = state["trace_id"] = request_id(dict(scope["headers"]).get(b"x-request-id"))

        started = False

        async def send_with_trace(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                if "x-trace-id" not in headers:
                    headers.append("X-Trace-Id", trace)
            await send(message)

        try:
            await self.app(scope, receive, send_with_trace)
        except Exception as exc:
            # The records database is down (raised in a route or in the idempotency
            # middleware): answer 503 here, with one log line and the connection
            # kept open, rather than via the last-resort handler, which logs a
            # traceback per request and makes uvicorn drop the connection.
            if started or not _is_database_down(exc):
                raise
            log.warning(
                "records database unavailable (%s %s): %s",
                scope.get("method"),
                scope.get("path"),
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            response = JSONResponse(
                {
                    "code": "service_unavailable",
                    "message": "records database unavailable",
                    "trace_id": trace,
                },
                status_code=503,
                headers={"X-Trace-Id": trace},
            )
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    app.add_middleware(_TraceMiddleware)

    @app.exception_handler(AetherError)
    async def aether_error(request: Request, exc: AetherError) -> JSONResponse:
        return envelope(request, exc.status, exc.code, exc.message, exc.details)

    @app.exception_handler(StoreUnavailableError)
    async def store_down(request: Request, exc: StoreUnavailableError) -> JSONResponse:
        return envelope(request, 503, "service_unavailable", f"state store unavailable: {exc}")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(short(str(p)) for p in err['loc'])}: {short(err['msg'], 200)}"
            for err in exc.errors()[:10]
        )
        return envelope(request, 400, "bad_request", f"invalid request: {problems}")

    @app.exception_handler(OverflowError)
    async def out_of_range(request: Request, exc: OverflowError) -> JSONResponse:
        # a number the request carried that no column or counter can hold; the request
        # models bound their integers, this is the guard for one that slipped through
        return envelope(request, 400, "bad_request", "invalid request: a number is out of range")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "internal" if exc.status_code >= 500 else "bad_request")
        return envelope(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _unexpected(request, exc)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    if _is_database_down(exc):
        return envelope(request, 503, "service_unavailable", "records database unavailable")
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return envelope(
        request, 500, "internal", "internal error; the server log has details under this trace id"
    )


def _is_database_down(exc: BaseException) -> bool:
    """The records database is unreachable: refused, dropped, shut down or timed out.

    SQLAlchemy wraps the driver's errors (sqlite3's and psycopg's ``OperationalError``,
    psycopg's ``AdminShutdown`` when PostgreSQL stops); a pool that cannot hand out a
    connection in time raises its own ``TimeoutError``. The causes are followed too,
    for code that re-raises a database error as something else.
    """
    import psycopg
    from sqlalchemy.exc import DBAPIError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OperationalError | PoolTimeoutError | psycopg.OperationalError):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False

"""A real HTTP server for agents' tools: any ASGI app on a free loopback port in a
thread (:func:`serving`), and :func:`tool_server`, one that records every request and
answers by path:

- ``/status/{code}``: that status, with a short text body;
- ``/redirect?to=URL``: a 302 to ``URL``;
- ``/big``: 100 KiB of text;
- ``/slow``: waits 5 s;
- anything else: 200 with a JSON echo of the request (method, path, query, body,
  headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from aether.ports import free_port

__all__ = ["Seen", "ToolServer", "serving", "tool_server"]


@dataclass(frozen=True)
class Seen:
    method: str
    path: str  # as sent (still percent-encoded)
    query: str
    headers: dict[str, str]  # lower-case names
    body: Any  # the JSON body, or None


@dataclass
class ToolServer:
    url: str = ""  # http://127.0.0.1:PORT
    requests: list[Seen] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        seen = Seen(
            request.method,
            scope.get("raw_path", b"").decode() or request.url.path,
            request.url.query,
            {k.lower(): v for k, v in request.headers.items()},
            body,
        )
        self.requests.append(seen)
        response = await self._answer(request, seen)
        await response(scope, receive, send)

    async def _answer(self, request: Request, seen: Seen) -> Response:
        path = request.url.path
        if path.startswith("/status/"):
            return PlainTextResponse("scripted failure: " + "x" * 1000, int(path.split("/")[2]))
        if path == "/redirect":
            return RedirectResponse(request.query_params["to"], 302)
        if path == "/big":
            return PlainTextResponse("y" * 100_000)
        if path == "/slow":
            await asyncio.sleep(5)
        return JSONResponse(
            {
                "method": seen.method,
                "path": seen.path,
                "query": seen.query,
                "body": seen.body,
                "headers": seen.headers,
            }
        )


@contextlib.contextmanager
def serving(
    app: ASGIApp, *, lifespan: Literal["on", "off"] = "off", tls: tuple[Path, Path] | None = None
) -> Iterator[str]:
    """``app`` served on a free loopback port (its base URL), stopped on exit; with
    ``tls`` (a certificate and its key, PEM files) over HTTPS."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan=lifespan,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="tool-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def tool_server() -> Iterator[ToolServer]:
    server = ToolServer()
    with serving(server) as url:
        server.url = url
        with contextlib.suppress(httpx.TransportError):
            httpx.get(url + "/ready", timeout=2)
        server.requests.clear()
        yield server

"""The console: server-rendered pages at ``/ui``, served by every server.

Pages are Jinja2 templates (``aether/ui/templates``) with two small scripts of
our own (``console.js``: live regions; ``charts.js``) and uPlot (vendored in
``aether/ui/static``); each page module here is one router. Data
comes from the same HTTP API the CLI uses (:mod:`.client`), so the API's
authorization and tenancy apply unchanged. :func:`install_console` mounts it all
and gives every ``/ui`` answer its security headers.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aether.errors import AetherError
from aether.server.console import (
    agents,
    alerts,
    apps,
    fallback,
    nodes,
    overview,
    policies,
    risk,
    runs,
    settings,
    signin,
    tasks,
    topology,
)
from aether.server.console.client import ApiError
from aether.server.console.view import ConsoleError, SignInRequired, console_response

__all__ = ["CSP", "install_console"]

#: no inline script or style, nothing from another host, no framing
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
# one router per page set; the fallback last: it answers any other path
_PAGES = (
    signin,
    overview,
    apps,
    nodes,
    topology,
    tasks,
    risk,
    alerts,
    agents,
    runs,
    policies,
    settings,
    fallback,
)


class ConsoleHeaders:
    """Security headers on every ``/ui`` answer (pages, errors and static files)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/ui" or path.startswith("/ui/")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] not in dict(_HEADERS)]
                if not path.startswith("/ui/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers + _HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _on_ui(request: Request) -> bool:
    return request.url.path == "/ui" or request.url.path.startswith("/ui/")


def _wrap_handler(app: FastAPI, kind: type[Exception]) -> None:
    """Under ``/ui`` an error is a page; elsewhere the API's envelope, as before."""
    previous = app.exception_handlers.get(kind)

    async def handler(request: Request, exc: Exception) -> Response:
        if _on_ui(request) or previous is None:
            if isinstance(exc, StarletteHTTPException):
                message = "No such page." if exc.status_code == 404 else str(exc.detail)
                return console_response(request, ConsoleError(exc.status_code, message))
            if isinstance(exc, RequestValidationError):
                return console_response(
                    request, ConsoleError(400, "The form or address has an invalid value.")
                )
            return console_response(request, exc)
        response: Response = await previous(request, exc)  # type: ignore[misc]
        return response

    app.exception_handlers[kind] = handler


def install_console(app: FastAPI) -> None:
    """Mount ``/ui``: static files, every page's router, headers and error pages."""
    app.mount("/ui/static", StaticFiles(directory=str(files("aether.ui") / "static")), "ui-static")
    for module in _PAGES:
        app.include_router(module.router, prefix="/ui", include_in_schema=False)
    kinds: tuple[type[Exception], ...] = (
        ConsoleError,
        SignInRequired,
        ApiError,
        AetherError,
        RequestValidationError,
        StarletteHTTPException,
    )
    for kind in kinds:
        _wrap_handler(app, kind)
    app.add_middleware(ConsoleHeaders)

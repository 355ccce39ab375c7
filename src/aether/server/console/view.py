"""What every console page handler gets: the visitor, the API as them, and rendering.

``Page`` (a dependency) resolves the session cookie; a visitor without one is
sent to the sign-in page, one with a forged, expired or signed-out cookie gets
the error page (401) and the cookie is cleared. ``Action`` is the same for a
form that changes something, and also checks the form's CSRF token. Errors
anywhere under ``/ui`` render the error page with the API's message, never a
JSON envelope.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from aether import __version__
from aether.errors import AetherError
from aether.server.console.client import ApiError, ConsoleApi
from aether.server.context import ServerContext, get_context
from aether.server.http.errors import trace_id_of
from aether.server.http.sessions import SESSION_COOKIE, check_csrf
from aether.store.records import Principal

__all__ = [
    "ROLE_RANK",
    "Action",
    "ConsoleError",
    "Page",
    "SignInRequired",
    "View",
    "console_response",
    "error_page",
    "paginate",
    "sign_in_redirect",
    "templates",
]

T = TypeVar("T")
templates = Jinja2Templates(directory=str(files("aether.ui") / "templates"))

#: what each role may do, lowest first: a page asks ``view.can("operator")``
ROLE_RANK = {"viewer": 0, "operator": 1, "admin": 2}

NAV = (
    ("overview", "Overview", "/ui/"),
    ("nodes", "Nodes", "/ui/nodes"),
    ("apps", "Apps", "/ui/apps"),
    ("tasks", "Tasks", "/ui/tasks"),
    ("risk", "Risk & decisions", "/ui/risk"),
    ("alerts", "Alerts", "/ui/alerts"),
    ("topology", "Topology", "/ui/topology"),
    ("agents", "Agents", "/ui/agents"),
    ("runs", "Runs", "/ui/runs"),
    ("policies", "Policies", "/ui/policies"),
    ("settings", "Settings", "/ui/settings"),
)


def paginate(items: Sequence[T], number: int, size: int) -> tuple[list[T], int, int]:
    """Page ``number`` (from 1, clamped to the last) of ``items``: (its items, the page's
    number, how many pages there are, at least one)."""
    pages = max(1, -(-len(items) // size))
    number = min(max(1, number), pages)
    return list(items[(number - 1) * size : number * size]), number, pages


class ConsoleError(Exception):
    """An error shown as the console's error page."""

    def __init__(self, status: int, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class SignInRequired(Exception):
    """No session cookie at all: go to the sign-in page, then come back."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def _ago(ts: float | str | None) -> str:
    """'12 s ago', '3 min ago', ... for an epoch timestamp (or an ISO string)."""
    if ts is None or ts == "":
        return "never"
    if isinstance(ts, str):
        try:
            ts = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return str(ts)
    seconds = max(0.0, time.time() - float(ts))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


templates.env.filters["ago"] = _ago
templates.env.filters["bytes"] = _bytes


@dataclass
class View:
    """One signed-in visitor on one request."""

    request: Request
    principal: Principal
    csrf: str
    api: ConsoleApi

    def can(self, role: str) -> bool:
        """Whether the visitor's role is at least ``role`` (``cluster``: a cluster admin;
        ``cluster-operator``: an operator or admin of the default tenant, who runs nodes)."""
        if role == "cluster":
            return self.principal.cluster_admin
        if role == "cluster-operator":
            return self.principal.cluster_operator
        return ROLE_RANK.get(self.principal.role, -1) >= ROLE_RANK[role]

    def render(
        self, template: str, *, page: str, status_code: int = 200, **context: Any
    ) -> Response:
        return templates.TemplateResponse(
            self.request,
            template,
            {
                "view": self,
                "nav": NAV,
                "page": page,
                "principal": self.principal,
                "csrf": self.csrf,
                "version": __version__,
                **context,
            },
            status_code=status_code,
        )


async def _session(request: Request, ctx: ServerContext) -> tuple[str, Principal, str]:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(target)
    found = await ctx.sessions.resolve(cookie, ctx.records)
    if found is None:
        raise ConsoleError(
            401,
            "Your console session is not valid: it expired, was signed out, or its token "
            "was revoked. Sign in again.",
            code="session_expired",
        )
    return cookie, found[0], found[1]


async def _page(request: Request, ctx: Annotated[ServerContext, Depends(get_context)]) -> View:
    cookie, principal, csrf = await _session(request, ctx)
    return View(request, principal, csrf, ConsoleApi(request.app, cookie, csrf))


async def _action(request: Request, ctx: Annotated[ServerContext, Depends(get_context)]) -> View:
    cookie, principal, csrf = await _session(request, ctx)
    sent = request.headers.get("x-csrf-token")
    if sent is None:
        form = await request.form()
        field = form.get("csrf")
        sent = field if isinstance(field, str) else None
    try:
        check_csrf(sent, csrf)
    except AetherError as exc:
        raise ConsoleError(403, exc.message, code="csrf_failed") from exc
    return View(request, principal, csrf, ConsoleApi(request.app, cookie, csrf))


Page = Annotated[View, Depends(_page)]
Action = Annotated[View, Depends(_action)]


def error_page(request: Request, status: int, message: str, code: str = "error") -> Response:
    """The console's error page; a 401 also clears the session cookie."""
    response = templates.TemplateResponse(
        request,
        "error.html",
        {
            "status": status,
            "message": message,
            "code": code,
            "version": __version__,
            "trace_id": trace_id_of(request),
        },
        status_code=status,
    )
    if status == 401:
        response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def sign_in_redirect(next_url: str) -> Response:
    return RedirectResponse(f"/ui/login?next={quote(next_url, safe='/')}", status_code=303)


def console_response(request: Request, exc: Exception) -> Response:
    """The page for an exception raised under ``/ui``."""
    if isinstance(exc, SignInRequired):
        return sign_in_redirect(exc.next_url)
    if isinstance(exc, ConsoleError):
        return error_page(request, exc.status, exc.message, exc.code)
    if isinstance(exc, ApiError):
        return error_page(request, exc.status, exc.message, exc.code)
    if isinstance(exc, AetherError):
        return error_page(request, exc.status, exc.message, exc.code)
    return error_page(request, 500, "The console failed to render this page.", "internal")

"""Signing in and out of the console with an API token.

The sign-in form is protected like every other form: ``GET /ui/login`` sets a
short-lived ``aether_login_csrf`` cookie and puts the same value in the form, and
the ``POST`` must carry both (no session exists yet to hold a CSRF token). A
good token opens a session (``console_sessions``) whose random id goes into the
``aether_session`` cookie: HttpOnly, SameSite=Strict, Secure when the request
came over TLS, for ``console_session_hours``. Every sign-in (opened, or refused:
a bad token, a token of another role, a failed CSRF check) and sign-out is an
audit event (``console.signin``, ``console.signout``).
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from aether import __version__
from aether.errors import AetherError
from aether.server.console.view import Action, error_page, templates
from aether.server.context import ServerContext, get_context
from aether.server.http.audit import audit_request
from aether.server.http.sessions import SESSION_COOKIE, check_csrf
from aether.server.services.accounts import limit_sign_in, password_login
from aether.store.records import Principal

__all__ = ["open_console_session", "router", "safe_next"]

router = APIRouter()
Ctx = Annotated[ServerContext, Depends(get_context)]
LOGIN_CSRF_COOKIE = "aether_login_csrf"
_CONSOLE_ROLES = ("admin", "operator", "viewer")
SIGN_IN = "console.signin"  # the audit events' action (and console.signout)
TARGET = "console"


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path of this server, never another host."""
    if not target or not target.startswith("/ui") or target.startswith("//") or "\\" in target:
        return "/ui/"
    return target


def _login_form(request: Request, *, status: int = 200, message: str = "") -> Response:
    token = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request,
        "login.html",
        {
            "login_csrf": token,
            "next": safe_next(request.query_params.get("next")),
            "message": message,
            "version": __version__,
            "sso": _sso_enabled(request),
        },
        status_code=status,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=3600,
        path="/ui/login",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _sso_enabled(request: Request) -> bool:
    ctx = getattr(request.app.state, "ctx", None)
    return bool(ctx is not None and ctx.oidc.enabled)


@router.get("/login")
async def login_form(request: Request) -> Response:
    return _login_form(request)


@router.post("/login")
async def login(
    request: Request,
    ctx: Ctx,
    token: Annotated[str, Form(max_length=512)] = "",
    user: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    totp: Annotated[str, Form(max_length=10)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/ui/",
) -> Response:
    try:
        check_csrf(csrf, request.cookies.get(LOGIN_CSRF_COOKIE, ""))
    except AetherError:
        await audit_request(request, None, SIGN_IN, TARGET, 403, "sign-in form: CSRF check failed")
        return error_page(
            request,
            403,
            "The sign-in form expired or was not sent from this console; "
            "open the sign-in page again.",
            "csrf_failed",
        )
    if user.strip():
        return await _password_sign_in(request, ctx, user.strip(), password, totp, next)
    principal = await ctx.tokens.resolve(token.strip(), ctx.records) if token.strip() else None
    if principal is None:
        await audit_request(request, None, SIGN_IN, TARGET, 401, "invalid or revoked token")
        return _login_form(request, status=401, message="That token is not valid (or revoked).")
    if principal.role not in _CONSOLE_ROLES:
        await audit_request(
            request, principal, SIGN_IN, TARGET, 403, f"a {principal.role} token may not sign in"
        )
        return _login_form(
            request,
            status=403,
            message=f"A {principal.role} token cannot sign in to the console; "
            "use an admin, operator or viewer token.",
        )
    if not await audit_request(request, principal, SIGN_IN, TARGET, 303):
        return error_page(  # fail closed: no session without its audit event
            request, 503, "Signing in is unavailable right now; try again.", "audit_unavailable"
        )
    return await open_console_session(request, ctx, principal, next)


async def _password_sign_in(
    request: Request, ctx: ServerContext, user: str, password: str, totp: str, next: str
) -> Response:
    """An account's sign-in: the same checks, limits and audit event as ``POST
    /api/v1/auth/login``, ending in a session."""
    try:
        await limit_sign_in(ctx, request, user)
        result = await password_login(ctx, user, password, None, totp or None)
    except AetherError as exc:
        await audit_request(
            request, None, SIGN_IN, f"users/{user}", exc.status, f"{exc.code}: {exc.message}"
        )
        message = (
            "Wrong user name or password." if exc.code == "invalid_credentials" else exc.message
        )
        return _login_form(request, status=exc.status, message=message)
    principal = result.principal()
    if not await audit_request(request, principal, SIGN_IN, f"users/{user}", 303, "password"):
        return error_page(
            request, 503, "Signing in is unavailable right now; try again.", "audit_unavailable"
        )
    return await open_console_session(request, ctx, principal, next)


async def open_console_session(
    request: Request, ctx: ServerContext, principal: Principal, next: str
) -> Response:
    """Open a session for a signed-in principal and send the browser on to ``next``."""
    hours = ctx.settings.console_session_hours
    session_id, _ = await ctx.records.open_session(principal.token_id, hours * 3600)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=int(hours * 3600),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/ui/login")
    return response


@router.post("/logout")
async def logout(view: Action, ctx: Ctx) -> Response:
    cookie = view.request.cookies.get(SESSION_COOKIE, "")
    await audit_request(view.request, view.principal, "console.signout", TARGET, 303)
    await ctx.records.close_session(cookie)
    ctx.sessions.forget(cookie)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response

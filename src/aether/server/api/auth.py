"""Signing in for a token (a password, or OpenID Connect), and who the caller is.

``POST /auth/login`` checks a password (and a TOTP code) and answers a token of the
account in one tenant. ``GET /auth/oidc/start`` sends a browser to the provider;
``GET /auth/oidc/callback`` takes it back, and either opens a console session or
hands the CLI waiting on ``http://127.0.0.1:{cli_port}/`` a one-time code, which
``POST /auth/oidc/exchange`` turns into a token for whoever also holds the verifier
the CLI kept (PKCE between the CLI and the server). Every sign-in, done or refused,
is an audit event; tries are limited per account name and per source address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response

from aether.errors import AetherError, BadRequestError, UnauthorizedError
from aether.model.users import (
    AuthProvidersOut,
    LoginIn,
    LoginOut,
    OidcExchangeIn,
    WhoAmIOut,
)
from aether.server.console.signin import open_console_session, safe_next
from aether.server.console.view import error_page
from aether.server.context import ServerContext, get_context
from aether.server.http.audit import audit_request
from aether.server.http.auth import Caller
from aether.server.services.accounts import (
    LoginResult,
    issue_login_token,
    limit_sign_in,
    password_login,
    pick_tenant,
)
from aether.server.services.oidc import account_for, check_loopback_port
from aether.store.records.base import now, utc

__all__ = ["router"]

router = APIRouter(tags=["auth"])
Ctx = Annotated[ServerContext, Depends(get_context)]
SIGN_IN = "auth.signin"  # the audit events' action
_OIDC_TTL = 600.0  # seconds from start to callback
_EXCHANGE_TTL = 60.0  # seconds from callback to the CLI's exchange


def _callback_url(request: Request, ctx: ServerContext) -> str:
    base = (ctx.settings.public_url or str(request.base_url)).rstrip("/")
    return f"{base}/api/v1/auth/oidc/callback"


def _out(result: LoginResult) -> LoginOut:
    return LoginOut(
        token=result.token,
        token_id=result.token_id,
        user=result.user,
        tenant=result.tenant,
        role=result.role,
        expires_at=utc(result.expires_at),
    )


@router.get("/auth/providers")
async def providers(ctx: Ctx) -> AuthProvidersOut:
    """How one may sign in here (asked by `aether login` and the console's sign-in page)."""
    return AuthProvidersOut(
        password=True,
        oidc=ctx.oidc.enabled,
        oidc_issuer=ctx.oidc.issuer if ctx.oidc.enabled else None,
    )


@router.post("/auth/login")
async def login(body: LoginIn, request: Request, ctx: Ctx) -> LoginOut:
    request.state.audit_detail = f"password sign-in of {body.user!r}"
    await limit_sign_in(ctx, request, body.user)
    result = await password_login(ctx, body.user, body.password, body.tenant, body.totp)
    request.state.principal = result.principal()  # the audit event's actor
    return _out(result)


@router.get(
    "/auth/oidc/start",
    response_class=Response,
    responses={303: {"description": "On to the provider"}},
)
async def oidc_start(
    request: Request,
    ctx: Ctx,
    tenant: Annotated[str | None, Query(max_length=128)] = None,
    cli_port: Annotated[int | None, Query()] = None,
    cli_challenge: Annotated[str | None, Query(min_length=43, max_length=128)] = None,
    next: Annotated[str | None, Query(max_length=2048)] = None,
) -> Response:
    """Send the browser to the provider. With ``cli_port`` and ``cli_challenge`` (the
    base64url SHA-256 of a verifier the CLI keeps) the sign-in ends at the CLI; without,
    in a console session."""
    if not ctx.oidc.enabled:
        raise BadRequestError(
            "single sign-on is not configured on this server (AETHER_OIDC_ISSUER, "
            "AETHER_OIDC_CLIENT_ID)",
            code="oidc_disabled",
        )
    if (cli_port is None) != (cli_challenge is None):
        raise BadRequestError("cli_port and cli_challenge go together")
    purpose = "console" if cli_port is None else "cli"
    state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
    await ctx.records.begin_oidc_login(
        state,
        nonce=nonce,
        code_verifier=verifier,
        tenant=tenant,
        purpose=purpose,
        cli_port=check_loopback_port(cli_port) if cli_port is not None else None,
        cli_challenge=cli_challenge,
        next_url=safe_next(next),
        ttl_seconds=_OIDC_TTL,
    )
    url = await ctx.oidc.authorization_url(_callback_url(request, ctx), state, nonce, verifier)
    return RedirectResponse(url, status_code=303)


_HTML_PAGE: dict[str, Any] = {"content": {"text/html": {"schema": {"type": "string"}}}}


@router.get(
    "/auth/oidc/callback",
    response_class=Response,
    responses={
        303: {"description": "Signed in: on to the console, or to the CLI's loopback port"},
        400: {**_HTML_PAGE, "description": "An expired or spent sign-in (a page)"},
        401: {**_HTML_PAGE, "description": "The provider refused, or its token did not check"},
        403: {**_HTML_PAGE, "description": "No account for this identity"},
    },
)
async def oidc_callback(
    request: Request,
    ctx: Ctx,
    state: Annotated[str, Query(max_length=512)] = "",
    code: Annotated[str, Query(max_length=4096)] = "",
    error: Annotated[str, Query(max_length=256)] = "",
) -> Response:
    """The provider sends the browser back here; the sign-in ends here (console) or at
    the CLI's loopback port with a one-time code."""
    login = await ctx.records.take_oidc_login(state) if state else None
    if login is None:
        return await _refused(request, 400, "This sign-in expired or was used; start again.")
    try:
        if error or not code:
            raise UnauthorizedError(f"the provider refused: {error or 'no code'}")
        identity = await ctx.oidc.identity(
            _callback_url(request, ctx), code, login.code_verifier, login.nonce
        )
        user = await account_for(ctx.records, identity)
        picked = await pick_tenant(ctx, user, login.tenant)
    except AetherError as exc:
        return await _refused(request, exc.status, exc.message)
    if login.purpose == "console":
        result = await issue_login_token(ctx, user, picked, "single sign-on")
        principal = result.principal()
        await audit_request(request, principal, SIGN_IN, f"users/{user.name}", 303, "sso")
        return await open_console_session(request, ctx, principal, login.next_url)
    exchange = secrets.token_urlsafe(32)
    await ctx.records.finish_oidc_login(
        state, user.id, exchange, now() + timedelta(seconds=_EXCHANGE_TTL)
    )
    query = urlencode({"code": exchange})
    return RedirectResponse(f"http://127.0.0.1:{login.cli_port}/callback?{query}", 303)


async def _refused(request: Request, status: int, message: str) -> Response:
    request.state.audit_detail = f"single sign-on refused: {message}"
    if status not in (401, 403):  # the middleware audits those two
        await audit_request(request, None, SIGN_IN, "auth/oidc", status, message)
    return error_page(request, status, message, "oidc_failed")


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@router.post("/auth/oidc/exchange")
async def oidc_exchange(body: OidcExchangeIn, request: Request, ctx: Ctx) -> LoginOut:
    """The CLI's one-time code and its verifier, for the token of the sign-in."""
    login = await ctx.records.take_oidc_exchange(body.code)
    if (
        login is None
        or not login.user_id
        or login.cli_challenge is None
        or not hmac.compare_digest(_s256(body.verifier), login.cli_challenge)
    ):
        raise UnauthorizedError(
            "this sign-in code is unknown, used or expired; run `aether login --sso` again",
            code="invalid_credentials",
        )
    user = await ctx.records.get_user(login.user_id)
    if user is None:
        raise UnauthorizedError("the account is gone", code="invalid_credentials")
    picked = await pick_tenant(ctx, user, login.tenant)
    result = await issue_login_token(ctx, user, picked, "single sign-on")
    request.state.principal = result.principal()
    request.state.audit_detail = "single sign-on (CLI)"
    return _out(result)


@router.get("/whoami")
async def whoami(caller: Caller, ctx: Ctx) -> WhoAmIOut:
    tenants = (
        [t[1] for t in await ctx.records.tenants_of(caller.user_id)]
        if caller.user_id
        else [caller.tenant]
    )
    expires = utc(caller.expires_at) if caller.expires_at is not None else None
    return WhoAmIOut(
        user=caller.user,
        tenant=caller.tenant,
        role=caller.role,
        cluster_admin=caller.cluster_admin,
        token_id=caller.token_id,
        node=caller.node,
        expires_at=expires,
        tenants=tenants,
    )

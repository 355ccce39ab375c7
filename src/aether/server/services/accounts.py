"""Accounts: passwords (argon2id), the TOTP second factor, and signing in for a token.

A sign-in (a password here, OpenID Connect in ``services/oidc.py``) ends the same way:
:func:`issue_login_token` mints a token of the account in one tenant, valid for
``login_token_hours``; its role is the account's role there at each request.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Request
from limits import RateLimitItemPerMinute

from aether.errors import BadRequestError, ForbiddenError, RateLimitedError, UnauthorizedError
from aether.server.context import ServerContext
from aether.server.http.ratelimit import RATE_STATE_KEY, Verdict
from aether.server.services.revocations import forget_tokens
from aether.store.records import Principal
from aether.store.records.base import epoch, now
from aether.store.records.schema import User

__all__ = [
    "LoginResult",
    "forget_account",
    "hash_password",
    "issue_login_token",
    "limit_sign_in",
    "new_totp_secret",
    "password_login",
    "pick_tenant",
    "totp_step",
    "totp_uri",
    "verify_password",
]

_HASHER = PasswordHasher()  # argon2id with the library's (RFC 9106 low-memory) parameters
# verified against when the account does not exist, so both answers take as long
_DUMMY_HASH = _HASHER.hash("not a password of anyone")
MIN_PASSWORD = 12
#: password tries a minute per account name, and per source address (an office behind
#: one address signs in together)
SIGN_IN_ATTEMPTS_PER_MINUTE = 10
SIGN_IN_ATTEMPTS_PER_ADDRESS = 100


@dataclass(frozen=True, slots=True)
class LoginResult:
    token: str
    token_id: str
    user: str
    user_id: str
    tenant: str
    tenant_id: str
    role: str
    expires_at: float

    def principal(self) -> Principal:
        """The caller the new token stands for (the audit event's actor, a session's)."""
        return Principal(
            self.tenant_id,
            self.tenant,
            self.role,
            self.token_id,
            user=self.user,
            user_id=self.user_id,
            expires_at=self.expires_at,
        )


async def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise BadRequestError(f"a password needs at least {MIN_PASSWORD} characters")
    return await asyncio.to_thread(_HASHER.hash, password)


async def verify_password(stored: str | None, password: str) -> bool:
    def check() -> bool:
        try:
            return _HASHER.verify(stored or _DUMMY_HASH, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, user: str) -> str:
    """The ``otpauth://`` URI an authenticator app scans (as a QR code) or takes typed."""
    return pyotp.TOTP(secret).provisioning_uri(name=user, issuer_name="Aether")


def totp_step(secret: str, code: str, last_step: int | None, at: float | None = None) -> int | None:
    """The 30-second step ``code`` belongs to (this one or one either side: clocks drift),
    if it is right and newer than ``last_step`` (a code counts once); else None."""
    totp = pyotp.TOTP(secret)
    at = time.time() if at is None else at
    now_step = totp.timecode(datetime.fromtimestamp(at, UTC))
    for step in (now_step - 1, now_step, now_step + 1):
        if hmac.compare_digest(totp.generate_otp(step), code.strip()):
            return step if last_step is None or step > last_step else None
    return None


async def pick_tenant(ctx: ServerContext, user: User, tenant: str | None) -> tuple[str, str, str]:
    """(tenant id, name, role) to sign in to: the one asked for, else the account's only
    tenant. Asking for a tenant the account is not in is refused like a bad password."""
    tenants = await ctx.records.tenants_of(user.id)
    if tenant is not None:
        for found in tenants:
            if found[1] == tenant:
                return found
        raise UnauthorizedError("invalid user name or password", code="invalid_credentials")
    if len(tenants) == 1:
        return tenants[0]
    if not tenants:
        raise UnauthorizedError("invalid user name or password", code="invalid_credentials")
    names = ", ".join(t[1] for t in tenants)
    raise BadRequestError(f"this account is in several tenants ({names}): choose one (--tenant)")


async def issue_login_token(
    ctx: ServerContext, user: User, tenant: tuple[str, str, str], how: str
) -> LoginResult:
    tenant_id, tenant_name, role = tenant
    expires = now() + timedelta(hours=ctx.settings.login_token_hours)
    token_id, token = await ctx.records.issue_token(
        tenant_id, role, f"{how} sign-in of {user.name}", user_id=user.id, expires_at=expires
    )
    return LoginResult(
        token, token_id, user.name, user.id, tenant_name, tenant_id, role, epoch(expires)
    )


async def password_login(
    ctx: ServerContext, name: str, password: str, tenant: str | None, totp: str | None
) -> LoginResult:
    """Check a password (and the second factor) and issue a token."""
    user = await ctx.records.find_user(name)
    ok = await verify_password(user.password_hash if user else None, password)
    if user is None or not ok or user.disabled_at is not None or user.kind != "person":
        raise UnauthorizedError("invalid user name or password", code="invalid_credentials")
    picked = await pick_tenant(ctx, user, tenant)
    if user.totp_secret is not None:
        if not totp:
            raise UnauthorizedError(
                "this account needs a TOTP code from its authenticator app (--totp CODE)",
                code="totp_required",
            )
        step = totp_step(user.totp_secret, totp, user.totp_last_step)
        if step is None:
            raise UnauthorizedError(
                "wrong TOTP code (or one already used: wait for the next)",
                code="invalid_credentials",
            )
        await ctx.records.update_user(user.id, totp_last_step=step)
    elif picked[2] == "admin" and ctx.settings.totp_required_for_admins:
        raise ForbiddenError(
            "admins must sign in with a second factor here, and this account has none: "
            "a cluster admin enrols one with `aether users totp "
            f"{user.name}` (or sign in with single sign-on)",
            code="totp_enrollment_required",
        )
    return await issue_login_token(ctx, user, picked, "password")


async def forget_account(ctx: ServerContext, user_id: str) -> None:
    """Make every server ask the records again about the account's tokens and sessions
    (its role changed, or it was disabled): here at once, the others within a second."""
    ctx.tokens.forget_user(user_id)
    ctx.sessions.forget_user(user_id)
    await forget_tokens(ctx, await ctx.records.user_token_ids(user_id))


async def limit_sign_in(ctx: ServerContext, request: Request, name: str) -> None:
    """Count a password try against the account name and the source address; 429 with
    ``Retry-After`` when either is over its limit (counted where the request rates are:
    in Redis when configured, so across servers)."""
    source = request.client.host if request.client else ""
    for item, key in (
        (RateLimitItemPerMinute(SIGN_IN_ATTEMPTS_PER_MINUTE), f"user:{name.lower()}"),
        (RateLimitItemPerMinute(SIGN_IN_ATTEMPTS_PER_ADDRESS), f"source:{source}"),
    ):
        try:
            allowed = await ctx.limiter.strategy.hit(item, "sign-in", key)
            stats = await ctx.limiter.strategy.get_window_stats(item, "sign-in", key)
        except Exception:  # the counters' store is down: the password check still stands
            return
        if not allowed:
            reset = max(1, math.ceil(stats.reset_time - time.time()))
            request.scope.setdefault("state", {})[RATE_STATE_KEY] = Verdict(
                False, item.amount, 0, reset, "sign-in attempts"
            )
            raise RateLimitedError(
                f"too many sign-in attempts: retry after {reset} s (at most "
                f"{item.amount} a minute per {key.partition(':')[0]})"
            )

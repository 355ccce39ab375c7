"""A tenant's members: people and service accounts, their role, password and TOTP.

Accounts are cluster-wide identities (a person may belong to several tenants, with a
role in each); a tenant admin manages the members of its own tenant, and an account
that is not a member is a 404 to it. Changing what belongs to the account rather than
the membership (its password, second factor, e-mail address, being disabled) needs an
admin who *governs* it: a cluster admin, or an admin of every tenant it belongs to. A
person may change its own password and second factor.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from aether.errors import BadRequestError, ConflictError, NotFoundError, UnauthorizedError
from aether.model.users import MemberIn, PasswordIn, TotpOut, UserIn, UserOut, UserPatch
from aether.server.context import ServerContext, get_context
from aether.server.http.audit import refuse
from aether.server.http.auth import Admin, Caller, ClusterAdmin
from aether.server.services.accounts import (
    forget_account,
    hash_password,
    new_totp_secret,
    totp_uri,
    verify_password,
)
from aether.server.services.revocations import forget_tokens
from aether.store.records import Principal
from aether.store.records.base import now
from aether.store.records.schema import User
from aether.store.records.users import Member

__all__ = ["router"]

router = APIRouter(tags=["users"])
Ctx = Annotated[ServerContext, Depends(get_context)]


def _out(member: Member, totp: TotpOut | None = None) -> UserOut:
    user = member.user
    return UserOut(
        name=user.name,
        kind=user.kind,
        role=member.role,
        display_name=user.display_name,
        email=user.email,
        password=user.password_hash is not None,
        totp=user.totp_secret is not None,
        sso=user.oidc_subject is not None,
        disabled=user.disabled_at is not None,
        created_at=user.created_at,
        totp_enrolment=totp,
    )


def _enrolment(user: User, secret: str) -> TotpOut:
    return TotpOut(secret=secret, uri=totp_uri(secret, user.name))


async def _member(ctx: ServerContext, caller: Principal, name: str) -> Member:
    """A member of the caller's tenant: any of them for an admin, else only yourself."""
    if caller.role != "admin" and name != caller.user:
        raise NotFoundError(f"user {name!r} not found")
    return await ctx.records.member(caller.tenant_id, name)


async def _governed(ctx: ServerContext, request: Request, caller: Principal, name: str) -> Member:
    """A member whose account the caller may change: yourself, or as an admin of every
    tenant it belongs to (or a cluster admin)."""
    member = await _member(ctx, caller, name)
    if name == caller.user or caller.cluster_admin:
        return member
    tenants = {t[0] for t in await ctx.records.tenants_of(member.user.id)}
    if tenants != {caller.tenant_id}:
        raise refuse(
            request,
            caller,
            f"users/{name}",
            "the account belongs to other tenants too; a cluster admin may change it",
        )
    return member


@router.get("/users")
async def list_users(caller: Admin, ctx: Ctx) -> list[UserOut]:
    return [_out(m) for m in await ctx.records.members(caller.tenant_id)]


@router.post("/users", status_code=201)
async def create_user(body: UserIn, caller: Admin, ctx: Ctx) -> UserOut:
    if body.kind == "service" and (body.password or body.email or body.totp):
        raise BadRequestError("a service account has no password, e-mail or TOTP: it uses tokens")
    password = await hash_password(body.password) if body.password else None
    secret = new_totp_secret() if body.totp else None
    user = await ctx.records.create_user(
        body.name,
        body.kind,
        display_name=body.display_name,
        email=body.email,
        password_hash=password,
    )
    if secret is not None:
        await ctx.records.update_user(user.id, totp_secret=secret)
        user.totp_secret = secret
    await ctx.records.set_role(user.id, caller.tenant_id, body.role)
    return _out(Member(user, body.role), _enrolment(user, secret) if secret else None)


@router.get("/users/{user}")
async def get_user(user: str, caller: Caller, ctx: Ctx) -> UserOut:
    return _out(await _member(ctx, caller, user))


@router.patch("/users/{user}")
async def update_user(
    user: str, body: UserPatch, request: Request, caller: Admin, ctx: Ctx
) -> UserOut:
    member = await ctx.records.member(caller.tenant_id, user)
    account: dict[str, Any] = {}
    if body.display_name is not None:
        account["display_name"] = body.display_name
    if body.email is not None:
        account["email"] = body.email
    if body.disabled is not None:
        account["disabled_at"] = now() if body.disabled else None
    if account:
        member = await _governed(ctx, request, caller, user)
        await ctx.records.update_user(member.user.id, **account)
    if body.role is not None and body.role != member.role:
        await ctx.records.set_role(member.user.id, caller.tenant_id, body.role)
    await forget_account(ctx, member.user.id)
    return _out(await ctx.records.member(caller.tenant_id, user))


@router.delete("/users/{user}")
async def remove_user(user: str, caller: Admin, ctx: Ctx) -> dict[str, Any]:
    """Take the account out of this tenant (its tokens here stop working at once)."""
    member = await ctx.records.member(caller.tenant_id, user)
    revoked = await ctx.records.remove_member(member.user.id, caller.tenant_id)
    await forget_tokens(ctx, revoked)
    await forget_account(ctx, member.user.id)
    return {"name": user, "removed": True, "tokens_revoked": len(revoked)}


@router.put("/users/{user}/password", status_code=204)
async def set_password(
    user: str, body: PasswordIn, request: Request, caller: Caller, ctx: Ctx
) -> None:
    member = await _governed(ctx, request, caller, user)
    if member.user.kind != "person":
        raise BadRequestError("a service account has no password: it uses tokens")
    own = user == caller.user and member.user.password_hash is not None
    if own and not (
        body.current_password
        and await verify_password(member.user.password_hash, body.current_password)
    ):
        raise UnauthorizedError(
            "to change your password, give the current one (current_password)",
            code="invalid_credentials",
        )
    await ctx.records.update_user(member.user.id, password_hash=await hash_password(body.password))


@router.post("/users/{user}/totp", status_code=201)
async def enrol_totp(user: str, request: Request, caller: Caller, ctx: Ctx) -> TotpOut:
    """A new TOTP secret for the account (replacing any), returned once."""
    member = await _governed(ctx, request, caller, user)
    if member.user.kind != "person":
        raise BadRequestError("a service account signs in with tokens only")
    secret = new_totp_secret()
    await ctx.records.update_user(member.user.id, totp_secret=secret, totp_last_step=None)
    return _enrolment(member.user, secret)


@router.delete("/users/{user}/totp", status_code=204)
async def remove_totp(user: str, request: Request, caller: Admin, ctx: Ctx) -> None:
    member = await _governed(ctx, request, caller, user)
    if member.user.totp_secret is None:
        raise ConflictError(f"user {user!r} has no second factor")
    await ctx.records.update_user(member.user.id, totp_secret=None)


@router.put("/tenants/{tenant}/members/{user}")
async def add_member(
    tenant: str, user: str, body: MemberIn, caller: ClusterAdmin, ctx: Ctx
) -> UserOut:
    """Make an existing account a member of ``tenant`` with ``role`` (or change its role
    there): how a person comes to work in several tenants."""
    found = await ctx.records.find_tenant(tenant)
    account = await ctx.records.find_user(user)
    if found is None:
        raise NotFoundError(f"tenant {tenant!r} not found")
    if account is None:
        raise NotFoundError(f"user {user!r} not found")
    await ctx.records.set_role(account.id, found.id, body.role)
    await forget_account(ctx, account.id)
    return _out(await ctx.records.member(found.id, user))

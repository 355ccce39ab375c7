"""Accounts (people and service accounts), their roles per tenant, and OIDC sign-ins."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from aether.errors import ConflictError, NotFoundError
from aether.store.records.base import RecordsBase, hash_token, new_id, now
from aether.store.records.schema import (
    ApiToken,
    ConsoleSession,
    Membership,
    OidcLogin,
    Tenant,
    User,
)

__all__ = ["Member", "UserRecords"]


@dataclass(frozen=True, slots=True)
class Member:
    """An account and its role in one tenant."""

    user: User
    role: str


class UserRecords(RecordsBase):
    async def create_user(
        self,
        name: str,
        kind: str,
        *,
        display_name: str = "",
        email: str | None = None,
        password_hash: str | None = None,
        oidc_issuer: str | None = None,
        oidc_subject: str | None = None,
    ) -> User:
        """A new account; ConflictError when its name or e-mail address is taken."""
        user = User(
            id=new_id(),
            name=name,
            kind=kind,
            display_name=display_name,
            email=email,
            password_hash=password_hash,
            oidc_issuer=oidc_issuer,
            oidc_subject=oidc_subject,
            created_at=now(),
        )
        async with self.sessions() as session:
            session.add(user)
            try:
                await session.commit()
            except IntegrityError as exc:
                raise ConflictError(
                    f"an account named {name!r} (or with that e-mail address) already exists"
                ) from exc
        return user

    async def get_user(self, user_id: str) -> User | None:
        async with self.sessions() as session:
            return await session.get(User, user_id)

    async def find_user(self, name: str) -> User | None:
        async with self.sessions() as session:
            return await session.scalar(select(User).where(User.name == name))

    async def find_user_by_oidc(self, issuer: str, subject: str) -> User | None:
        async with self.sessions() as session:
            return await session.scalar(
                select(User).where(User.oidc_issuer == issuer, User.oidc_subject == subject)
            )

    async def find_user_by_email(self, email: str) -> User | None:
        async with self.sessions() as session:
            return await session.scalar(select(User).where(func.lower(User.email) == email.lower()))

    async def update_user(self, user_id: str, **values: Any) -> None:
        async with self.sessions() as session:
            try:
                await session.execute(update(User).where(User.id == user_id).values(**values))
                await session.commit()
            except IntegrityError as exc:
                raise ConflictError("that e-mail address belongs to another account") from exc

    async def role_in(self, user_id: str, tenant_id: str) -> str | None:
        async with self.sessions() as session:
            return await session.scalar(
                select(Membership.role).where(
                    Membership.user_id == user_id, Membership.tenant_id == tenant_id
                )
            )

    async def member(self, tenant_id: str, name: str) -> Member:
        """The account ``name`` in the tenant; NotFoundError when it is not a member (whether
        or not it exists elsewhere)."""
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(User, Membership.role)
                    .join(Membership, Membership.user_id == User.id)
                    .where(User.name == name, Membership.tenant_id == tenant_id)
                )
            ).first()
        if row is None:
            raise NotFoundError(f"user {name!r} not found")
        return Member(row[0], row[1])

    async def members(self, tenant_id: str) -> list[Member]:
        async with self.sessions() as session:
            rows = await session.execute(
                select(User, Membership.role)
                .join(Membership, Membership.user_id == User.id)
                .where(Membership.tenant_id == tenant_id)
                .order_by(User.name)
            )
            return [Member(user, role) for user, role in rows.all()]

    async def tenants_of(self, user_id: str) -> list[tuple[str, str, str]]:
        """(tenant id, tenant name, role) of every tenant the account belongs to."""
        async with self.sessions() as session:
            rows = await session.execute(
                select(Tenant.id, Tenant.name, Membership.role)
                .join(Membership, Membership.tenant_id == Tenant.id)
                .where(Membership.user_id == user_id)
                .order_by(Tenant.name)
            )
            return [(tid, tname, role) for tid, tname, role in rows.all()]

    async def set_role(self, user_id: str, tenant_id: str, role: str) -> None:
        """Make the account a member of the tenant with ``role`` (or change its role)."""
        async with self.sessions() as session:
            found = await session.get(Membership, (user_id, tenant_id))
            if found is None:
                session.add(
                    Membership(user_id=user_id, tenant_id=tenant_id, role=role, created_at=now())
                )
            else:
                found.role = role
            await session.commit()

    async def remove_member(self, user_id: str, tenant_id: str) -> list[str]:
        """Take the account out of the tenant and revoke its tokens there; the revoked ids.
        An account left in no tenant is deleted."""
        async with self.sessions() as session:
            ids = list(
                await session.scalars(
                    select(ApiToken.id).where(
                        ApiToken.user_id == user_id,
                        ApiToken.tenant_id == tenant_id,
                        ApiToken.revoked_at.is_(None),
                    )
                )
            )
            await session.execute(
                update(ApiToken)
                .where(ApiToken.user_id == user_id, ApiToken.tenant_id == tenant_id)
                .values(revoked_at=now())
            )
            await session.execute(
                delete(Membership).where(
                    Membership.user_id == user_id, Membership.tenant_id == tenant_id
                )
            )
            left = await session.scalar(
                select(func.count()).select_from(Membership).where(Membership.user_id == user_id)
            )
            if not left:  # an account in no tenant is gone (its tokens, all revoked, too)
                tokens = select(ApiToken.id).where(ApiToken.user_id == user_id)
                await session.execute(
                    delete(ConsoleSession).where(ConsoleSession.token_id.in_(tokens))
                )
                await session.execute(delete(ApiToken).where(ApiToken.user_id == user_id))
                await session.execute(delete(User).where(User.id == user_id))
            await session.commit()
        return ids

    async def user_token_ids(self, user_id: str) -> list[str]:
        async with self.sessions() as session:
            return list(
                await session.scalars(
                    select(ApiToken.id).where(
                        ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None)
                    )
                )
            )

    async def list_users(self) -> Sequence[User]:
        async with self.sessions() as session:
            return (await session.scalars(select(User).order_by(User.name))).all()

    # -- OpenID Connect sign-ins under way -------------------------------------------------

    async def begin_oidc_login(
        self,
        state: str,
        *,
        nonce: str,
        code_verifier: str,
        tenant: str | None,
        purpose: str,
        cli_port: int | None,
        cli_challenge: str | None,
        next_url: str,
        ttl_seconds: float,
    ) -> None:
        at = now()
        async with self.sessions() as session:
            await session.execute(delete(OidcLogin).where(OidcLogin.expires_at <= at))
            session.add(
                OidcLogin(
                    state_hash=hash_token(state),
                    nonce=nonce,
                    code_verifier=code_verifier,
                    tenant=tenant,
                    purpose=purpose,
                    cli_port=cli_port,
                    cli_challenge=cli_challenge,
                    next_url=next_url,
                    expires_at=at + timedelta(seconds=ttl_seconds),
                )
            )
            await session.commit()

    async def take_oidc_login(self, state: str) -> OidcLogin | None:
        """The sign-in of this ``state``, once: it is spent by the callback."""
        async with self.sessions() as session:
            login = await session.get(OidcLogin, hash_token(state))
            if login is None or login.expires_at <= now() or login.user_id is not None:
                return None
            login.user_id = ""  # spent; the callback sets the account (or leaves it empty)
            await session.commit()
            return login

    async def finish_oidc_login(
        self, state: str, user_id: str, exchange_code: str | None, expires_at: datetime
    ) -> None:
        async with self.sessions() as session:
            await session.execute(
                update(OidcLogin)
                .where(OidcLogin.state_hash == hash_token(state))
                .values(
                    user_id=user_id,
                    exchange_hash=hash_token(exchange_code) if exchange_code else None,
                    expires_at=expires_at,
                )
            )
            await session.commit()

    async def take_oidc_exchange(self, code: str) -> OidcLogin | None:
        """The finished CLI sign-in of this one-time code, once."""
        async with self.sessions() as session:
            login = await session.scalar(
                select(OidcLogin).where(OidcLogin.exchange_hash == hash_token(code))
            )
            if login is None:
                return None
            await session.delete(login)
            await session.commit()
            return None if login.expires_at <= now() else login

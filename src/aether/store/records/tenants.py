"""Tenants and API tokens."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from aether.errors import NotFoundError
from aether.store.records.base import (
    DEFAULT_TENANT,
    ROLES,
    Principal,
    RecordsBase,
    hash_token,
    new_id,
    now,
)
from aether.store.records.schema import (
    ApiToken,
    Tenant,
)

__all__ = ["TenantRecords"]


class TenantRecords(RecordsBase):
    async def ensure_tenant(self, name: str = DEFAULT_TENANT) -> Tenant:
        async with self.sessions() as session:
            tenant = await session.scalar(select(Tenant).where(Tenant.name == name))
            if tenant is not None:
                return tenant
            tenant = Tenant(id=new_id(), name=name, created_at=now())
            session.add(tenant)
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                found = await session.scalar(select(Tenant).where(Tenant.name == name))
                assert found is not None
                return found
            return tenant

    async def has_token(self, role: str) -> bool:
        async with self.sessions() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(ApiToken)
                .where(ApiToken.role == role, ApiToken.revoked_at.is_(None))
            )
            return bool(count)

    async def create_token(self, tenant_id: str, role: str, name: str) -> str:
        """A new token; only its hash is stored, the plain text is returned once."""
        return (await self.issue_token(tenant_id, role, name))[1]

    async def issue_token(
        self, tenant_id: str, role: str, name: str, *, node_id: str | None = None
    ) -> tuple[str, str]:
        """(id, plain text) of a new token; a node credential names its node."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        if (role == "node") != (node_id is not None):
            raise ValueError("a node credential, and only one, is bound to a node id")
        token = f"ae_{role[:1]}_{secrets.token_urlsafe(32)}"
        token_id = new_id()
        async with self.sessions() as session:
            session.add(
                ApiToken(
                    id=token_id,
                    tenant_id=tenant_id,
                    name=name,
                    role=role,
                    token_hash=hash_token(token),
                    created_at=now(),
                    revoked_at=None,
                    node_id=node_id,
                )
            )
            await session.commit()
        return token_id, token

    async def list_tokens(self, tenant_id: str) -> Sequence[ApiToken]:
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(ApiToken)
                    .where(ApiToken.tenant_id == tenant_id)
                    .order_by(ApiToken.created_at)
                )
            ).all()

    async def get_token(self, tenant_id: str, token_id: str) -> ApiToken:
        async with self.sessions() as session:
            token = await session.scalar(
                select(ApiToken).where(ApiToken.tenant_id == tenant_id, ApiToken.id == token_id)
            )
        if token is None:
            raise NotFoundError(f"token {token_id!r} not found")
        return token

    async def revoke_token(self, token_id: str) -> None:
        async with self.sessions() as session:
            await session.execute(
                update(ApiToken).where(ApiToken.id == token_id).values(revoked_at=now())
            )
            await session.commit()

    async def authenticate(self, token: str) -> Principal | None:
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(ApiToken, Tenant)
                    .join(Tenant, Tenant.id == ApiToken.tenant_id)
                    .where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
                )
            ).first()
            if row is None:
                return None
            tok, tenant = row
            return Principal(tenant.id, tenant.name, tok.role, tok.id, tok.node_id)

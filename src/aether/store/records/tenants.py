"""Tenants and API tokens."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from aether.errors import ConflictError, NotFoundError
from aether.store.records.base import (
    DEFAULT_TENANT,
    ROLES,
    Principal,
    RecordsBase,
    epoch,
    hash_token,
    new_id,
    now,
)
from aether.store.records.schema import (
    AgentDeploymentRow,
    AgentModel,
    AgentPolicyRow,
    AgentRecipeRow,
    AgentRow,
    AgentRunEventRow,
    AgentRunFileRow,
    AgentRunRow,
    AgentRunStepRow,
    AgentThreadRow,
    AgentToolRow,
    AgentVersionRow,
    ApiToken,
    App,
    Artifact,
    ConsoleSession,
    DecisionRow,
    Deployment,
    DeploymentEvent,
    Execution,
    IdempotencyKey,
    Membership,
    MemoryItemRow,
    MigrationRecord,
    PolicyEnforcementRow,
    PublicKey,
    Sandbox,
    SecretRow,
    SnapshotRecord,
    Task,
    TaskEventRow,
    Tenant,
    User,
)

__all__ = ["PurgedTenant", "TenantRecords", "principal_of", "principal_query"]


def principal_query() -> Select[ApiToken, Tenant, str, User]:
    """Live tokens with their tenant, and their account and its role there, if any."""
    return (
        select(ApiToken, Tenant, Membership.role, User)
        .join(Tenant, Tenant.id == ApiToken.tenant_id)
        .outerjoin(User, User.id == ApiToken.user_id)
        .outerjoin(
            Membership,
            and_(
                Membership.user_id == ApiToken.user_id, Membership.tenant_id == ApiToken.tenant_id
            ),
        )
        .where(
            ApiToken.revoked_at.is_(None),
            or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now()),
        )
    )


def principal_of(
    token: ApiToken, tenant: Tenant, member_role: str | None, user: User | None
) -> Principal | None:
    """The caller a live token stands for. An account's token takes the account's role in
    the tenant, so it dies with the membership or the account."""
    role = token.role
    if token.user_id is not None:
        if user is None or user.disabled_at is not None or member_role is None:
            return None
        role = member_role
    return Principal(
        tenant.id,
        tenant.name,
        role,
        token.id,
        token.node_id,
        user=user.name if user is not None else None,
        user_id=token.user_id,
        expires_at=epoch(token.expires_at) if token.expires_at is not None else None,
    )


@dataclass(frozen=True, slots=True)
class PurgedTenant:
    """What removing a tenant's records took away (the caller cleans up the rest)."""

    token_ids: list[str]
    digests: set[str]  # its artifact claims and snapshot blobs


# the tenant-owned tables, children before parents (PostgreSQL checks the foreign keys)
_OWNED = (
    AgentRunFileRow,
    AgentRunEventRow,
    AgentRunStepRow,
    AgentRunRow,
    AgentThreadRow,
    MemoryItemRow,  # its FTS5 rows go with it (migration 0021's triggers)
    SecretRow,
    AgentDeploymentRow,
    AgentVersionRow,
    AgentRow,
    AgentRecipeRow,
    PolicyEnforcementRow,
    AgentPolicyRow,
    AgentToolRow,
    AgentVersionRow,
    Execution,
    Sandbox,
    TaskEventRow,
    Task,
    IdempotencyKey,
    SnapshotRecord,
    MigrationRecord,
    DecisionRow,
    PublicKey,
    Deployment,
    App,
    Artifact,
    ApiToken,
    Membership,
    AgentModel,
)


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
        self,
        tenant_id: str,
        role: str,
        name: str,
        *,
        node_id: str | None = None,
        user_id: str | None = None,
        expires_at: datetime | None = None,
        uses: int | None = None,
    ) -> tuple[str, str]:
        """(id, plain text) of a new token; a node credential names its node, an account's
        token its account (whose membership then gives the role)."""
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
                    user_id=user_id,
                    expires_at=expires_at,
                    uses_left=uses,
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
        """The token's caller; None if it is unknown, revoked or expired, or its account
        is disabled or no longer a member of the token's tenant."""
        async with self.sessions() as session:
            row = (
                await session.execute(
                    principal_query().where(ApiToken.token_hash == hash_token(token))
                )
            ).first()
        if row is None:
            return None
        tok, tenant, role, user = row
        return principal_of(tok, tenant, role, user)

    async def create_tenant(self, name: str, display_name: str, description: str) -> Tenant:
        """A new tenant; ConflictError when the name is taken."""
        tenant = Tenant(
            id=new_id(),
            name=name,
            created_at=now(),
            display_name=display_name,
            description=description,
        )
        async with self.sessions() as session:
            session.add(tenant)
            try:
                await session.commit()
            except IntegrityError:
                raise ConflictError(f"tenant {name!r} already exists") from None
        return tenant

    async def find_tenant(self, name: str) -> Tenant | None:
        async with self.sessions() as session:
            return await session.scalar(select(Tenant).where(Tenant.name == name))

    async def list_tenants(self) -> Sequence[Tenant]:
        async with self.sessions() as session:
            return (await session.scalars(select(Tenant).order_by(Tenant.name))).all()

    async def update_tenant(self, tenant_id: str, **values: str) -> None:
        async with self.sessions() as session:
            await session.execute(update(Tenant).where(Tenant.id == tenant_id).values(**values))
            await session.commit()

    async def live_app_counts(self) -> dict[str, int]:
        """Apps not deleted, by tenant id."""
        async with self.sessions() as session:
            rows = await session.execute(
                select(App.tenant_id, func.count())
                .where(App.deleted_at.is_(None))
                .group_by(App.tenant_id)
            )
            return {tenant_id: count for tenant_id, count in rows.all()}

    async def live_sandbox_counts(self) -> dict[str, int]:
        """Sandboxes neither deleted nor failed, by tenant id."""
        async with self.sessions() as session:
            rows = await session.execute(
                select(Sandbox.tenant_id, func.count())
                .where(Sandbox.status.not_in(("deleted", "failed")))
                .group_by(Sandbox.tenant_id)
            )
            return {tenant_id: count for tenant_id, count in rows.all()}

    async def purge_tenant(self, tenant_id: str) -> PurgedTenant:
        """Remove every record of the tenant and the tenant itself, in one transaction."""
        async with self.sessions() as session:
            token_ids = list(
                await session.scalars(select(ApiToken.id).where(ApiToken.tenant_id == tenant_id))
            )
            digests = set(
                await session.scalars(
                    select(Artifact.digest).where(Artifact.tenant_id == tenant_id)
                )
            ) | set(
                await session.scalars(
                    select(SnapshotRecord.digest).where(SnapshotRecord.tenant_id == tenant_id)
                )
            )
            deployments = select(Deployment.id).where(Deployment.tenant_id == tenant_id)
            await session.execute(
                delete(DeploymentEvent).where(DeploymentEvent.deployment_id.in_(deployments))
            )
            await session.execute(
                delete(ConsoleSession).where(ConsoleSession.token_id.in_(token_ids))
            )
            for table in _OWNED:
                await session.execute(delete(table).where(table.tenant_id == tenant_id))
            # a service account lives in one tenant: it goes with it (people stay: they are
            # cluster-wide accounts that may belong to other tenants)
            members = select(Membership.user_id)
            await session.execute(
                delete(User).where(User.kind == "service", User.id.not_in(members))
            )
            await session.execute(delete(Tenant).where(Tenant.id == tenant_id))
            await session.commit()
        return PurgedTenant(token_ids, digests)

    async def claimed_digests(self, digests: set[str]) -> set[str]:
        """Which of ``digests`` some tenant still claims or some snapshot still names."""
        if not digests:
            return set()
        async with self.sessions() as session:
            claimed = set(
                await session.scalars(select(Artifact.digest).where(Artifact.digest.in_(digests)))
            )
            claimed |= set(
                await session.scalars(
                    select(SnapshotRecord.digest).where(SnapshotRecord.digest.in_(digests))
                )
            )
        return claimed

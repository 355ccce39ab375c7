"""What every part of the records repository shares: ids, times, the caller, the sessions."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = [
    "DEFAULT_TENANT",
    "ROLES",
    "Principal",
    "RecordsBase",
    "epoch",
    "hash_token",
    "new_id",
    "now",
    "utc",
]

DEFAULT_TENANT = "default"
#: ``join``: a join token (the cluster admin's), exchanged for a node credential (``node``,
#: bound to one node id) by ``POST /api/v1/nodes/join``; neither is a tenant's role
ROLES = ("admin", "operator", "viewer", "join", "node")


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def utc(ts: float) -> datetime:
    """A naive UTC datetime for an epoch timestamp (how the records database stores time)."""
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


def epoch(dt: datetime) -> float:
    """The epoch timestamp of a datetime; a naive one is taken as UTC."""
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant every query is scoped by, and the role.

    ``node`` is the node id a node credential is bound to (role ``node``), else None;
    ``user`` the account (a person or a service account) the token belongs to, whose
    role in the tenant ``role`` is; ``expires_at`` the token's expiry (epoch seconds).
    """

    tenant_id: str
    tenant: str
    role: str
    token_id: str
    node: str | None = None
    user: str | None = None
    user_id: str | None = None
    expires_at: float | None = None

    @property
    def cluster_admin(self) -> bool:
        """The cluster-admin role: an admin of the ``default`` tenant. Above every tenant's
        admin: manages tenants, adds and revokes nodes, creates join tokens, backs up."""
        return self.role == "admin" and self.tenant == DEFAULT_TENANT

    @property
    def cluster_operator(self) -> bool:
        """An operator or admin of the ``default`` tenant: runs the shared nodes (drains
        them, signals about them, drills them), which no other tenant's roles may."""
        return self.role in ("admin", "operator") and self.tenant == DEFAULT_TENANT


class RecordsBase:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def delete_owned(self, table: Any, tenant_id: str, **key: str) -> bool:
        """Delete the tenant's row of ``table`` matching ``key`` (column=value); False if
        it had none (another tenant's row is never touched)."""
        clauses = [table.tenant_id == tenant_id]
        clauses += [getattr(table, column) == value for column, value in key.items()]
        async with self.sessions() as session:
            result = await session.execute(delete(table).where(*clauses))
            await session.commit()
        return bool(getattr(result, "rowcount", 0))

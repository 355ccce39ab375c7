"""The records schema (history and queries). Changed only through Alembic migrations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiToken",
    "App",
    "Artifact",
    "Base",
    "Deployment",
    "DeploymentEvent",
    "Execution",
    "IdempotencyKey",
    "Node",
    "PublicKey",
    "Sandbox",
    "Task",
    "Tenant",
]


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime]


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))  # admin | operator | viewer | node
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class App(Base):
    __tablename__ = "apps"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime]
    require_signature: Mapped[bool] = mapped_column(default=False, server_default=false())
    retain_deployments: Mapped[int | None]


class PublicKey(Base):
    """An Ed25519 public key allowed to sign an app's artifacts."""

    __tablename__ = "public_keys"
    __table_args__ = (UniqueConstraint("app_id", "fingerprint"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id"))
    name: Mapped[str] = mapped_column(String(128))
    public_key: Mapped[str] = mapped_column(String(128))  # base64 of the 32 raw bytes
    fingerprint: Mapped[str] = mapped_column(String(71))  # sha256: of the raw key
    created_at: Mapped[datetime]


class Artifact(Base):
    """A tenant's claim on a blob in the registry (blobs are shared, rows are not)."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("tenant_id", "digest"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    digest: Mapped[str] = mapped_column(String(71))
    size_bytes: Mapped[int]
    created_at: Mapped[datetime]
    signature: Mapped[str | None] = mapped_column(Text)  # base64 Ed25519 over the digest
    signed_by: Mapped[str | None] = mapped_column(String(71))  # fingerprint that verified it
    manifest: Mapped[dict[str, Any] | None]
    sbom: Mapped[dict[str, Any] | None]


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("app_id", "version"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id"))
    version: Mapped[int]
    digest: Mapped[str] = mapped_column(String(71))
    spec: Mapped[dict[str, Any]]
    instances: Mapped[int]
    status: Mapped[str] = mapped_column(String(16))  # pending|active|superseded|failed
    rollback_of: Mapped[int | None]
    created_at: Mapped[datetime]
    rollout: Mapped[dict[str, Any] | None]  # strategy and its parameters
    healthy_at: Mapped[datetime | None]


class DeploymentEvent(Base):
    __tablename__ = "deployment_events"
    __table_args__ = (Index("ix_deployment_events_deployment", "deployment_id", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"))
    type: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int]
    response: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class Node(Base):
    """Every node that ever registered, so a lost one shows as ``down``."""

    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    router_url: Mapped[str] = mapped_column(String(255))
    capabilities: Mapped[dict[str, Any]]
    draining: Mapped[bool] = mapped_column(default=False)
    registered_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]


class Task(Base):
    """A unit of run-to-completion work in the SQL queue backend."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_tasks_claim", "queue", "state", "priority", "seq"),
        Index("ix_tasks_tenant_state", "tenant_id", "state"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    queue: Mapped[str] = mapped_column(String(64))
    priority: Mapped[int]
    max_retry: Mapped[int]
    timeout: Mapped[float]
    run_at: Mapped[datetime]
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int]
    result: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    node: Mapped[str | None] = mapped_column(String(128))  # must run there (vm:execute)
    driver: Mapped[str | None] = mapped_column(String(32))  # the node needs this driver
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Sandbox(Base):
    __tablename__ = "sandboxes"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(128))
    node: Mapped[str | None] = mapped_column(String(128))
    driver: Mapped[str] = mapped_column(String(32))
    vcpus: Mapped[int]
    memory_mb: Mapped[int]
    network: Mapped[bool] = mapped_column(default=False)
    isolated: Mapped[bool] = mapped_column(default=True)
    status: Mapped[str] = mapped_column(String(16))  # creating|running|stopped|deleted|failed
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Execution(Base):
    __tablename__ = "executions"
    __table_args__ = (Index("ix_executions_sandbox", "sandbox_id", "started_at"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    sandbox_id: Mapped[str] = mapped_column(ForeignKey("sandboxes.id"))
    task_id: Mapped[str | None] = mapped_column(String(64))
    command: Mapped[str] = mapped_column(Text)
    args: Mapped[list[str]] = mapped_column(JSON)
    exit_code: Mapped[int | None]
    stdout: Mapped[str] = mapped_column(Text)
    stderr: Mapped[str] = mapped_column(Text)
    stdout_truncated: Mapped[bool] = mapped_column(default=False)
    stderr_truncated: Mapped[bool] = mapped_column(default=False)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]

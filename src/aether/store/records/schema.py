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
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "TASKS_READY",
    "AgentDeploymentRow",
    "AgentModel",
    "AgentPolicyRow",
    "AgentRecipeRow",
    "AgentRow",
    "AgentRunEventRow",
    "AgentRunFileRow",
    "AgentRunRow",
    "AgentRunStepRow",
    "AgentThreadRow",
    "AgentToolRow",
    "AgentVersionRow",
    "AlertRow",
    "AlertSilenceRow",
    "ApiToken",
    "App",
    "Artifact",
    "AuditChain",
    "AuditEventRow",
    "Base",
    "ConsoleSession",
    "DecisionRow",
    "Deployment",
    "DeploymentEvent",
    "Execution",
    "IdempotencyKey",
    "Membership",
    "MemoryItemRow",
    "MetricRollup",
    "MigrationRecord",
    "Node",
    "OidcLogin",
    "PluginRow",
    "PolicyEnforcementRow",
    "PublicKey",
    "RiskAssessmentRow",
    "Sandbox",
    "SignalRow",
    "SnapshotRecord",
    "Task",
    "TaskEventRow",
    "Tenant",
    "TenantLimitsRow",
    "User",
]


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime]
    display_name: Mapped[str] = mapped_column(String(128), default="", server_default="")
    description: Mapped[str] = mapped_column(Text, default="", server_default="")


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))  # admin | operator | viewer | join | node
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    # a node credential (role ``node``) is bound to one node id; every other token: None
    node_id: Mapped[str | None] = mapped_column(String(128), index=True)
    # a token of a user or service account takes its role from the account's membership
    # of the tenant (so a change of role or a removal reaches its tokens); None: a bare token
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), index=True)
    expires_at: Mapped[datetime | None]
    # a join token's joins still allowed (None: any number); the last one revokes it
    uses_left: Mapped[int | None] = mapped_column(default=None)


class User(Base):
    """An account: a person (password and/or OpenID Connect) or a service account (tokens
    only). Accounts are cluster-wide identities; what they may do is per tenant
    (``memberships``)."""

    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # person | service
    display_name: Mapped[str] = mapped_column(String(128), default="", server_default="")
    email: Mapped[str | None] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(256))  # argon2id
    totp_secret: Mapped[str | None] = mapped_column(String(64))  # base32; None: no second factor
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)  # a code counts once
    oidc_issuer: Mapped[str | None] = mapped_column(String(512))
    oidc_subject: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]
    __table_args__ = (UniqueConstraint("oidc_issuer", "oidc_subject"),)


class Membership(Base):
    """A user's role in one tenant."""

    __tablename__ = "memberships"
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # admin | operator | viewer
    created_at: Mapped[datetime]


class App(Base):
    __tablename__ = "apps"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime]
    require_signature: Mapped[bool] = mapped_column(default=False, server_default=false())
    require_provenance: Mapped[bool] = mapped_column(default=False, server_default=false())
    retain_deployments: Mapped[int | None]
    # set by `aether apps rm`; deploying the name again clears it (and resets created_at)
    deleted_at: Mapped[datetime | None]


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
    provenance: Mapped[dict[str, Any] | None]  # DSSE envelope of the in-toto statement
    provenance_by: Mapped[str | None] = mapped_column(String(71))  # key that verified it


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        UniqueConstraint("app_id", "version"),
        # the Idempotency-Key of the request that created it (NULLs never collide)
        Index("ux_deployments_request_key", "tenant_id", "request_key", unique=True),
    )
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
    request_key: Mapped[str | None] = mapped_column(String(255))


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
    # why and by whom (operator | controller | adviser) it is draining; kept across restarts
    drain_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    drained_by: Mapped[str] = mapped_column(String(16), default="", server_default="")
    # set by ``aether nodes revoke``: the node may not join again until an admin allows it
    revoked_at: Mapped[datetime | None]


#: The condition of ``ix_tasks_ready`` (queue, priority DESC, seq) over ready tasks
#: only, which claims read: a claim's cost does not grow with the finished tasks the
#: table keeps. A query must repeat the condition word for word to use the index.
#: The index is made by migration 0026 alone: its DESC column is an expression that
#: ``alembic check`` cannot compare with a model (see ``upgrades/env.py``).
TASKS_READY = "state IN ('pending', 'scheduled', 'retry')"


class Task(Base):
    """A unit of run-to-completion work in the SQL queue backend."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        # the leases ``expire`` checks: active tasks only
        Index(
            "ix_tasks_active",
            "lease_expires_at",
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
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
    traceparent: Mapped[str | None] = mapped_column(String(64))  # the submit's span
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class TaskEventRow(Base):
    """One state change of a task (the SQL queue's append-only log, read by the event
    stream by increasing id). Written in the transaction of the change; the garbage
    collector keeps the newest ``events_resume_limit`` rows. ``AUTOINCREMENT`` on
    SQLite: an id is never reused, even after the newest rows are gone."""

    __tablename__ = "task_events"
    __table_args__ = (
        Index("ix_task_events_task", "task_id", "id"),  # one task's history
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str] = mapped_column(String(64))
    task_type: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    previous: Mapped[str | None] = mapped_column(String(16))
    queue: Mapped[str] = mapped_column(String(64))
    priority: Mapped[int]
    attempt: Mapped[int]
    node: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    ts: Mapped[float]  # seconds since the epoch


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


class SignalRow(Base):
    """An external input about a node (spot price, rebalance notice, capacity score).

    Cluster-level, not tenant-owned. The risk engine reads new rows by id.
    """

    __tablename__ = "signals"
    __table_args__ = (
        Index("ix_signals_node", "node", "id"),
        Index("ix_signals_created_at", "created_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))  # spot_price | rebalance | capacity | clear
    value: Mapped[float]
    source: Mapped[str] = mapped_column(String(64))
    ts: Mapped[float]  # when it was observed (seconds since the epoch)
    created_at: Mapped[datetime]


class RiskAssessmentRow(Base):
    """A risk verdict on a node, written when it changes (and at least once a minute)."""

    __tablename__ = "risk_assessments"
    __table_args__ = (
        Index("ix_risk_assessments_node", "node", "id"),
        Index("ix_risk_assessments_ts", "ts"),
    )
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # LOW | MEDIUM | HIGH | CRITICAL
    confidence: Mapped[float]
    root_cause: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(64))
    inputs: Mapped[dict[str, Any]]
    ts: Mapped[float]


class DecisionRow(Base):
    """A controller decision (layer 1, 2 or 3) with its inputs, reason and outcome."""

    __tablename__ = "decisions"
    __table_args__ = (
        Index("ix_decisions_target", "target", "id"),
        Index("ix_decisions_ts", "ts"),
    )
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    ts: Mapped[float]  # seconds since the epoch
    layer: Mapped[int]  # 1 decision tree, 2 tactical adviser, 3 strategic adviser
    kind: Mapped[str] = mapped_column(String(16))  # scale | drain | undrain | advice | rebalance
    target: Mapped[str] = mapped_column(String(128))  # app name or node id
    tenant_id: Mapped[str | None] = mapped_column(String(64))  # the app's; None for nodes
    action: Mapped[dict[str, Any]]
    inputs: Mapped[dict[str, Any]]
    reason: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))  # applied | refused | failed
    detail: Mapped[str] = mapped_column(Text)


class MetricRollup(Base):
    """One node's or app's telemetry over one minute: mean and maximum of each figure.

    Written by the leader's telemetry hub once a minute; deleted after
    ``AETHER_METRICS_RETENTION_DAYS``. Cluster-level (apps are named globally).
    """

    __tablename__ = "metric_rollups"
    __table_args__ = (
        UniqueConstraint("kind", "name", "minute"),
        Index("ix_metric_rollups_minute", "minute"),
    )
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(8))  # node | app
    name: Mapped[str] = mapped_column(String(128))
    minute: Mapped[float]  # start of the minute, seconds since the epoch
    samples: Mapped[int]  # fresh seconds folded in
    avg_values: Mapped[dict[str, Any]]
    max_values: Mapped[dict[str, Any]]


class SnapshotRecord(Base):
    """A stored checkpoint of a stateful instance (the blob is in the artifact registry)."""

    __tablename__ = "snapshots"
    __table_args__ = (
        Index("ix_snapshots_app", "tenant_id", "app", "created_at"),
        Index("ix_snapshots_digest", "digest"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    app: Mapped[str] = mapped_column(String(63))
    instance: Mapped[str] = mapped_column(String(255))  # the key of the instance it came from
    node: Mapped[str] = mapped_column(String(128))
    digest: Mapped[str] = mapped_column(String(71))
    size_bytes: Mapped[int]
    kind: Mapped[str] = mapped_column(String(16))  # cooperative | criu | periodic | orphaned
    tier: Mapped[str] = mapped_column(String(8))  # hot | warm | cold (updated by retention)
    created_at: Mapped[datetime]
    # stored | orphaned | restored (an orphan is never what a new instance restores)
    status: Mapped[str] = mapped_column(String(16), default="stored", server_default="stored")
    # when the state was last known to be this one (None: created_at)
    taken_at: Mapped[datetime | None] = mapped_column(nullable=True)


class MigrationRecord(Base):
    """One instance moving from one node to another, and how it went."""

    __tablename__ = "migrations"
    __table_args__ = (
        Index("ix_migrations_app", "tenant_id", "app", "started_at"),
        Index("ix_migrations_status", "status"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    app: Mapped[str] = mapped_column(String(63))
    instance: Mapped[str] = mapped_column(String(255))
    from_node: Mapped[str] = mapped_column(String(128))
    to_node: Mapped[str | None] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # stateless | stateful
    status: Mapped[str] = mapped_column(String(16))  # requested|checkpointing|restoring|done|failed
    snapshot: Mapped[str | None] = mapped_column(String(71))
    replacement: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class ConsoleSession(Base):
    """A console sign-in: the cookie's hash, the token it was opened with, its CSRF token.

    The cookie holds a random id; only its hash is stored. Revoking the token ends
    every session opened with it (a session resolves through the token's row).
    """

    __tablename__ = "console_sessions"
    __table_args__ = (Index("ix_console_sessions_expires", "expires_at"),)
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[str] = mapped_column(ForeignKey("api_tokens.id"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class TenantLimitsRow(Base):
    """A tenant's own rate limit and quotas; a NULL column: the cluster default."""

    __tablename__ = "tenant_limits"
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )  # deleting the tenant deletes its limits
    rate_per_minute: Mapped[int | None]
    burst: Mapped[int | None]
    instances: Mapped[int | None] = mapped_column(BigInteger)
    cpu: Mapped[float | None]
    memory_mb: Mapped[int | None] = mapped_column(BigInteger)
    tasks: Mapped[int | None] = mapped_column(BigInteger)
    sandboxes: Mapped[int | None] = mapped_column(BigInteger)
    artifact_bytes: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class AuditEventRow(Base):
    """One audit event: who did what to which object, how it ended, from where.

    Append-only and hash-chained: ``hash`` is SHA-256 of ``prev_hash`` and the row's
    canonical JSON (``aether.store.records.audit.row_hash``), so an altered, removed
    or reordered row breaks the chain. ``AUTOINCREMENT`` on SQLite: ids never reused.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_tenant", "tenant_id", "id"),
        Index("ix_audit_events_ts", "ts"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    ts: Mapped[float]  # seconds since the epoch
    tenant_id: Mapped[str | None] = mapped_column(String(64))  # None: the cluster's
    tenant: Mapped[str | None] = mapped_column(String(128))
    actor_kind: Mapped[str] = mapped_column(String(16))  # token | node | controller | anonymous
    actor: Mapped[str] = mapped_column(String(128))  # token id, node id, "controller"
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(160))  # "POST /apps/{app}/scale"
    target: Mapped[str] = mapped_column(String(255))  # "apps/web/scale"
    outcome: Mapped[str] = mapped_column(String(16))  # ok | refused | failed
    status: Mapped[int | None]  # the HTTP status; None for the controller's actions
    source: Mapped[str | None] = mapped_column(String(64))  # the client's address
    trace_id: Mapped[str | None] = mapped_column(String(128))
    decision_id: Mapped[int | None]  # the controller's decision
    detail: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChain(Base):
    """The audit chain's one row: its head (the newest event) and its anchor (the hash
    the oldest kept event follows: the genesis, or the last event retention trimmed).

    Every append updates this row first, which serializes appends across servers
    (a row lock on PostgreSQL, the write lock on SQLite).
    """

    __tablename__ = "audit_chain"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    head_id: Mapped[int]
    head_hash: Mapped[str] = mapped_column(String(64))
    anchor_id: Mapped[int]
    anchor_hash: Mapped[str] = mapped_column(String(64))


class OidcLogin(Base):
    """A sign-in with OpenID Connect under way: from ``/auth/oidc/start`` to the provider
    and back (``state``), then, for the CLI, one exchange of a one-time code for a token.
    Only hashes of the state and the code are kept."""

    __tablename__ = "oidc_logins"
    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(128))
    code_verifier: Mapped[str] = mapped_column(String(128))  # PKCE, towards the provider
    tenant: Mapped[str | None] = mapped_column(String(128))
    purpose: Mapped[str] = mapped_column(String(16))  # cli | console
    cli_port: Mapped[int | None]
    cli_challenge: Mapped[str | None] = mapped_column(String(128))  # S256 of the CLI's verifier
    next_url: Mapped[str] = mapped_column(String(2048), default="", server_default="")
    expires_at: Mapped[datetime]
    user_id: Mapped[str | None] = mapped_column(String(64))  # set by the callback
    exchange_hash: Mapped[str | None] = mapped_column(String(64), index=True)


class AgentModel(Base):
    """A model endpoint in a tenant's catalog (``model://NAME``): an OpenAI-compatible
    chat-completions API. ``api_key`` is sealed (``services/secretbox.py``), never plain."""

    __tablename__ = "agent_models"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(63))
    provider: Mapped[str] = mapped_column(String(32))  # openai (the protocol)
    base_url: Mapped[str] = mapped_column(String(2048))
    model_id: Mapped[str] = mapped_column(String(256))
    context_window: Mapped[int]
    price_in_per_1k: Mapped[float]
    price_out_per_1k: Mapped[float]
    api_key: Mapped[str | None] = mapped_column(Text)  # v1:KEY_ID:TOKEN; None: no key
    created_at: Mapped[datetime]


class AgentToolRow(Base):
    """A tenant's own agent tool (the built-ins are code, not rows): its definition
    (``aether.agents.tools.Tool``) as JSON."""

    __tablename__ = "agent_tools"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    definition: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class AgentPolicyRow(Base):
    """A tenant's own agent policy (``default-safe`` is code): its definition
    (``aether.agents.policy.Policy``) as JSON; every change bumps ``version``."""

    __tablename__ = "agent_policies"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    definition: Mapped[dict[str, Any]]
    version: Mapped[int]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class PolicyEnforcementRow(Base):
    """One decision of a policy on a tool call: allow, deny or approval, why, and the
    arguments as kept (redacted). ``run_id``/``step`` link it to a run's step and
    ``audit_event_id`` to its audit event once runs exist (None until then)."""

    __tablename__ = "policy_enforcements"
    __table_args__ = (
        Index("ix_policy_enforcements_tenant", "tenant_id", "id"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    policy_id: Mapped[str] = mapped_column(String(64))
    policy_version: Mapped[int]
    principal: Mapped[str] = mapped_column(String(160))  # agent:ID or user:NAME
    tool_id: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[dict[str, Any]]
    decision: Mapped[str] = mapped_column(String(16))  # allow | deny | approval
    reasons: Mapped[list[str]] = mapped_column(JSON)
    run_id: Mapped[str | None] = mapped_column(String(64))
    step: Mapped[int | None]
    audit_event_id: Mapped[int | None]
    created_at: Mapped[datetime]


class AgentRow(Base):
    """An AI agent of a tenant: its name (unique in the tenant), status (created |
    disabled) and the version of its config in use (``agent_versions``)."""

    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # agt_ + 24 hex
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(63))
    status: Mapped[str] = mapped_column(String(16))
    current_version: Mapped[int]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]


class AgentVersionRow(Base):
    """One version of an agent's config: every create, patch and import adds one."""

    __tablename__ = "agent_versions"
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    model: Mapped[str] = mapped_column(String(80))  # model://NAME
    policy_ids: Mapped[list[str]] = mapped_column(JSON)
    tool_ids: Mapped[list[str]] = mapped_column(JSON)
    system_prompt: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(160))


class AgentDeploymentRow(Base):
    """A deployed agent: the version it pins and how many replicas it wants. Where the
    replicas run is the state store's ``agents/{agent_id}`` (the leader places them)."""

    __tablename__ = "agent_deployments"
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    version: Mapped[int]
    replicas: Mapped[int]
    deployed_at: Mapped[datetime]
    deployed_by: Mapped[str] = mapped_column(String(160))


class AgentRecipeRow(Base):
    """A tenant's own recipe in the agent catalog (the built-ins are code): its
    definition (``aether.agents.catalog.Recipe``) as JSON."""

    __tablename__ = "agent_recipes"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    definition: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class MemoryItemRow(Base):
    """One memory of an agent (``aether.agents.memory``): its own thread's when
    ``thread_id`` is set, else shared by all the agent's threads. ``embedding`` is the
    text's vector as float32 bytes, made by ``embedding_model`` (None: not embedded yet).

    Search indexes that are not models live beside it, made by migration 0021 only:
    on SQLite the FTS5 table ``memory_fts`` (rowid = ``seq``, kept by triggers), on
    PostgreSQL the generated ``tsvector`` column ``text_tsv`` and its GIN index
    (``upgrades/env.py`` keeps them out of the model comparison)."""

    __tablename__ = "memory_items"
    __table_args__ = (
        Index("ix_memory_items_scope", "tenant_id", "agent_id", "thread_id"),
        {"sqlite_autoincrement": True},
    )
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)  # mem_…
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    agent_id: Mapped[str] = mapped_column(String(64))
    thread_id: Mapped[str | None] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    embedding_model: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime]


class AgentThreadRow(Base):
    """A conversation with one agent: its runs, in order, are the history a new run of
    the thread starts from."""

    __tablename__ = "agent_threads"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # thr_… or the caller's
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    agent_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class AgentRunRow(Base):
    """One run of an agent (``aether.agents.runs``): its input, status, why it stopped,
    what it used, and the ``agent:run`` task that drives it (``task_id``: the latest)."""

    __tablename__ = "agent_runs"
    __table_args__ = (
        Index("ix_agent_runs_agent", "tenant_id", "agent_id", "created_at"),
        Index("ix_agent_runs_thread", "thread_id", "created_at"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # run_…
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    agent_id: Mapped[str] = mapped_column(String(64))
    agent_version: Mapped[int]
    thread_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(24))
    input: Mapped[str] = mapped_column(Text)
    output: Mapped[str | None] = mapped_column(Text)
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    concurrency: Mapped[str] = mapped_column(String(16))  # reject | enqueue | interrupt
    created_by: Mapped[str] = mapped_column(String(160))
    task_id: Mapped[str | None] = mapped_column(String(64))
    node: Mapped[str | None] = mapped_column(String(128))  # the node driving it now
    steps: Mapped[int]
    tool_calls: Mapped[int]
    tokens_in: Mapped[int]
    tokens_out: Mapped[int]
    cost: Mapped[float]
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class AgentRunStepRow(Base):
    """One step of a run: a model call or a tool call (its policy decision, approval,
    execution and result). ``key`` is the step's idempotency key (``{run}:{call}``), the
    one a tool's execution carries."""

    __tablename__ = "agent_run_steps"
    run_id: Mapped[str] = mapped_column(ForeignKey("agent_runs.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    kind: Mapped[str] = mapped_column(String(16))  # model | tool
    status: Mapped[str] = mapped_column(String(24))
    key: Mapped[str] = mapped_column(String(160), unique=True)
    call_id: Mapped[str | None] = mapped_column(String(128))
    tool_id: Mapped[str | None] = mapped_column(String(64))
    arguments: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    content: Mapped[str | None] = mapped_column(Text)  # the model's text, or a tool's output
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    decision: Mapped[str | None] = mapped_column(String(16))  # allow | deny | approval
    reasons: Mapped[list[str] | None] = mapped_column(JSON)
    enforcement_ids: Mapped[list[int] | None] = mapped_column(JSON)
    approved_by: Mapped[str | None] = mapped_column(String(160))
    decided_at: Mapped[datetime | None]  # when a person approved or rejected it
    task_id: Mapped[str | None] = mapped_column(String(64))
    node: Mapped[str | None] = mapped_column(String(128))
    tokens_in: Mapped[int]
    tokens_out: Mapped[int]
    cost: Mapped[float]
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class AgentRunEventRow(Base):
    """What a run's stream carries, in order (``seq`` is the SSE event id a client
    resumes after with ``Last-Event-ID``)."""

    __tablename__ = "agent_run_events"
    run_id: Mapped[str] = mapped_column(ForeignKey("agent_runs.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class SecretRow(Base):
    """A tenant's named secret (an http tool's header, a policy's redaction): its value
    sealed (``services/secretbox.py``), never plain, never returned."""

    __tablename__ = "secrets"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[str] = mapped_column(Text)  # v1:KEY_ID:TOKEN
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class AgentRunFileRow(Base):
    """A file a run's sandbox tool wrote under ``/workspace/out``, kept as the run's
    artifact (bounded: ``aether.tasks.handlers`` takes at most 16 files, 1 MiB each)."""

    __tablename__ = "agent_run_files"
    run_id: Mapped[str] = mapped_column(ForeignKey("agent_runs.id"), primary_key=True)
    step: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class PluginRow(Base):
    """A policy plugin of the cluster (WebAssembly, ``core/plugin_abi.py``): a risk or
    guard rule, its module bytes and the limits it runs under. One version per name:
    uploading a new version replaces the old."""

    __tablename__ = "plugins"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # risk | guard
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int]
    wasm: Mapped[bytes] = mapped_column(LargeBinary)
    fuel: Mapped[int] = mapped_column(BigInteger)
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    deadline_ms: Mapped[int]
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(160))


class AlertRow(Base):
    """An alert's current state (``aether.core.alerts``), kept by the leader so a new
    leader carries on where the old one stopped; one row per rule+labels."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_tenant", "tenant"),)
    fingerprint: Mapped[str] = mapped_column(String(32), primary_key=True)
    rule: Mapped[str] = mapped_column(String(64))
    labels: Mapped[dict[str, Any]]
    tenant: Mapped[str | None] = mapped_column(String(128))  # a tenant NAME; None: the cluster
    state: Mapped[str] = mapped_column(String(16))  # pending | firing | resolved
    severity: Mapped[str] = mapped_column(String(16))
    value: Mapped[float]
    started_at: Mapped[float]
    updated_at: Mapped[float]
    fired_at: Mapped[float | None]
    resolved_at: Mapped[float | None]
    silenced: Mapped[bool] = mapped_column(default=False)
    # the notifier: {"firing"|"resolved": {"attempts", "error", "delivered_at"}}
    notify: Mapped[dict[str, Any]] = mapped_column(default=dict)
    runbook_task: Mapped[str | None] = mapped_column(String(64))
    runbook_output: Mapped[str | None] = mapped_column(Text)


class AlertSilenceRow(Base):
    """A silence: matchers ``{label: value}`` muting alerts' notifications until ``ends_at``."""

    __tablename__ = "alert_silences"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str | None] = mapped_column(String(128))  # a tenant NAME; None: the cluster's
    matchers: Mapped[dict[str, Any]]
    starts_at: Mapped[float]
    ends_at: Mapped[float]
    comment: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128), default="")

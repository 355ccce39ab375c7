"""Request and response bodies of the HTTP API, shared by server, CLI and tests."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field

from aether.model.app import AppSpec
from aether.model.cluster import NodeCapabilities
from aether.model.names import CLUSTER_NAME_PATTERN
from aether.model.time import Timestamp
from aether.model.versioned import Versioned

__all__ = [
    "NODE_ID_PATTERN",
    "AppOut",
    "AssignmentLine",
    "DeploymentIn",
    "DeploymentOut",
    "EventOut",
    "HeartbeatIn",
    "HeartbeatOut",
    "InstanceOut",
    "JoinIn",
    "JoinOut",
    "LogEntry",
    "LogsIn",
    "NodeConfig",
    "NodeOut",
    "RegisterIn",
    "RegisterOut",
    "ReportIn",
    "ReportOut",
    "RetentionOut",
    "RollbackIn",
    "ScaleIn",
    "ServerOut",
    "StatusOut",
]


class DeploymentIn(BaseModel):
    digest: str
    spec: AppSpec
    instances: Annotated[int, Field(ge=0, le=1000)] | None = None
    sbom: dict[str, Any] | None = None  # CycloneDX JSON, recorded with the artifact
    manifest: list[dict[str, Any]] | None = None  # per-file path, size, sha256, mode


class EventOut(BaseModel):
    type: str
    message: str
    created_at: Timestamp


class InstanceOut(BaseModel):
    key: str
    app: str
    version: int
    n: int
    node: str
    command: str
    state: str | None
    message: str
    url: str | None


class DeploymentOut(BaseModel):
    id: str
    app: str
    version: int
    digest: str
    instances: int
    status: str
    rollback_of: int | None = None
    created_at: Timestamp
    spec: AppSpec
    instances_active: int | None = None
    instance_list: list[InstanceOut] | None = None
    events: list[EventOut] | None = None


class ScaleIn(BaseModel):
    instances: Annotated[int, Field(ge=0, le=1000)]


class RollbackIn(BaseModel):
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None


class AppOut(BaseModel):
    name: str
    version: int | None
    deployment_id: str | None
    instances_desired: int
    instances_active: int
    created_at: Timestamp
    # stateful apps: the recovery point objective (``[checkpoint] interval``, 0: periodic
    # checkpoints off) and the age of the newest checkpoint (None: none stored yet)
    rpo_seconds: float | None = None
    checkpoint_age_seconds: float | None = None
    # the path every node's router serves it under: /apps/{app}/ for the default
    # tenant's apps, /t/{tenant}/apps/{app}/ for another tenant's
    route: str = ""
    # fewer instances ACTIVE than desired: the newest instance failure of the live
    # deployment, its last line (e.g. a slice's import error); None: none recorded
    failure: str | None = None


class AppDeletedOut(BaseModel):
    """The answer to ``DELETE /apps/{app}``: what was removed and what now stops."""

    app: str
    deleted_at: Timestamp
    version: int | None  # the version that was live (None: nothing was deployed)
    instances_stopping: int  # the leader stops them; the route answers 404 at once
    forced: bool  # a running rollout was cut short (``?force=true``)


class NodeConfig(BaseModel):
    """The server's answer to a node's capabilities: which features it may use.

    ``features`` maps a feature name (``criu``, ``cgroup_limits``, ``microvm``,
    ``bwrap``, ``telemetry``, ``cooperative_checkpoint``) to on or off, decided
    by what the node reported and by server policy; ``reasons`` says why one is
    off.
    """

    features: dict[str, bool] = Field(default_factory=dict)
    reasons: dict[str, str] = Field(default_factory=dict)
    telemetry_interval: float = 1.0


class NodeOut(BaseModel):
    id: str
    state: Literal["ready", "down", "draining", "revoked"]
    router_url: str
    capabilities: NodeCapabilities
    config: NodeConfig  # what the handshake turned on for this node, and why not
    drain_reason: str = ""
    instances: int
    last_seen_at: Timestamp
    version: str | None = None  # the aether version it registered with (None: 0.1.0, down)


class ServerOut(Versioned):
    """A running server, as it announces itself in the state store (``servers/``)."""

    SCHEMA_NAME: ClassVar[str] = "server"

    url: str
    version: str
    started_at: float
    node_url: str | None = None  # where nodes call it (mutual TLS)


class StatusOut(BaseModel):
    api_url: str
    leader: str | None
    revision: int
    nodes: list[NodeOut]
    apps: list[AppOut]
    servers: list[ServerOut] = []  # every live server (HA: all of them), by URL


class RetentionOut(BaseModel):
    """How long the cluster keeps what it records (the server's settings, read-only)."""

    retain_deployments: int
    log_retention_bytes: int
    metrics_window_seconds: int
    metrics_retention_days: float
    events_resume_limit: int
    decisions_retention_seconds: float
    snapshot_keep: int
    gc_grace_seconds: float
    audit_retention_days: float


NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class JoinIn(Versioned):
    """A join token's one call: a credential and a certificate of its own for node ``id``."""

    SCHEMA_NAME: ClassVar[str] = "join"

    id: Annotated[str, Field(pattern=NODE_ID_PATTERN)]
    csr: str = Field(max_length=16384)  # PEM: the node's key; the CA names the identity


class JoinOut(Versioned):
    SCHEMA_NAME: ClassVar[str] = "join_reply"

    node_id: str
    # the node's own secret, sent with every call over mutual TLS with its certificate:
    # node routes accept it only from a connection whose certificate names the same node
    credential: str
    certificate: str  # PEM: spiffe://{cluster}/node/{node_id}, short-lived (renewed)
    authorities: list[str]  # PEM: the cluster CAs the node trusts the servers by
    node_urls: list[str]  # the servers' node ports (https), every live server
    not_after: float
    renew_at: float


class RegisterIn(Versioned):
    SCHEMA_NAME: ClassVar[str] = "register"

    id: Annotated[str, Field(pattern=NODE_ID_PATTERN)]
    capabilities: NodeCapabilities
    router_url: str
    version: str | None = None  # the node's aether version (None: 0.1.0 and older)


class RegisterOut(Versioned):
    SCHEMA_NAME: ClassVar[str] = "register_reply"

    node_id: str
    lease_id: int
    lease_ttl: float
    heartbeat_interval: float
    drain_grace: float  # the pause before a stop when the server cannot confirm a drain
    log_interval: float
    revision: int
    config: NodeConfig = Field(default_factory=NodeConfig)
    server_version: str | None = None  # the server's aether version (None: 0.1.0 and older)


class HeartbeatIn(Versioned):
    SCHEMA_NAME: ClassVar[str] = "heartbeat"

    lease_id: int


class HeartbeatOut(Versioned):
    """The lease renewed: its ``ttl``, the fingerprints of the CAs trusted now (a node
    that sees a new one renews its certificate from it) and, when a diagnostics bundle
    asks for the node's part, ``diag`` (its request's ``id`` and ``since``)."""

    SCHEMA_NAME: ClassVar[str] = "heartbeat_reply"

    ttl: float
    authorities: list[str] = Field(default_factory=list)
    diag: dict[str, Any] | None = None


class LogEntry(BaseModel):
    # both become a path under the log directory: plain names only, never ``..`` or ``/``
    tenant: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    app: Annotated[str, Field(pattern=CLUSTER_NAME_PATTERN)]  # split before it is a path
    label: str
    text: str


class LogsIn(Versioned):
    SCHEMA_NAME: ClassVar[str] = "logs"

    entries: list[LogEntry]


class RoutesIn(Versioned):
    """A node's router, after it applied the assignment stream up to ``revision``.

    ``in_flight``: requests it has open to instances no longer in its table
    (URL → count); instances stopping wait for these to finish.
    """

    SCHEMA_NAME: ClassVar[str] = "routes"

    revision: Annotated[int, Field(ge=0)]
    in_flight: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict, max_length=4096)


class RoutesOut(Versioned):
    """``PUT /nodes/{node}/routes``'s answer: the revision its ``routes/{node}`` got."""

    SCHEMA_NAME: ClassVar[str] = "routes_reply"

    revision: int


class LogsOut(Versioned):
    """``POST /nodes/{node}/logs``'s answer: how many entries were kept."""

    SCHEMA_NAME: ClassVar[str] = "logs_reply"

    accepted: int


class UnloadedOut(Versioned):
    """``DELETE /nodes/{node}/instances/…``'s answer (the node finished UNLOAD):
    whether the instance's record (and its endpoints) went."""

    SCHEMA_NAME: ClassVar[str] = "unloaded_reply"

    key: str
    deleted: bool


class InstanceSecretsOut(Versioned):
    """What a node writes into one instance: env values and file contents, by target
    (``GET /nodes/{node}/instances/…/secrets``)."""

    SCHEMA_NAME: ClassVar[str] = "instance_secrets"

    env: dict[str, str]
    files: dict[str, str]


class WithdrawalOut(Versioned):
    """Whether every live router stopped using an endpoint withdrawn at ``revision``.

    ``waiting_for``: node → what it has not confirmed yet (empty when confirmed).
    """

    SCHEMA_NAME: ClassVar[str] = "withdrawal_reply"

    confirmed: bool
    revision: int
    waiting_for: dict[str, str] = Field(default_factory=dict)


class ReportIn(Versioned):
    SCHEMA_NAME: ClassVar[str] = "report"

    state: str
    message: str = ""
    url: str | None = None
    request_id: str = ""
    snapshot: str | None = None  # with LOADED after a checkpoint: the stored snapshot's digest
    # with ACTIVE from a slice instance: its entry points (``$describe``'s ``entries``)
    entries: dict[str, dict[str, Any]] | None = None


class ReportOut(Versioned):
    """The answer to an instance's report: ``withdrawn_revision`` (set when the report
    withdrew an endpoint) is the revision routers must reach before the instance stops."""

    SCHEMA_NAME: ClassVar[str] = "report_reply"

    key: str
    state: str
    revision: int
    withdrawn_revision: int | None = None


class AssignmentLine(Versioned):
    """One line of a node's assignment stream (``GET /nodes/{node}/assignments``, NDJSON).

    ``snapshot``: the node's instances, every endpoint, the apps and the agents'
    placements at ``revision``; then ``PUT``/``DELETE`` of one ``key`` at ``revision``
    (``value``: the stored record, its own schema version inside; None for a
    blueprint); ``ping`` every few seconds; ``resync``: start again from 0.
    """

    SCHEMA_NAME: ClassVar[str] = "assignment"

    type: Literal["snapshot", "PUT", "DELETE", "ping", "resync"]
    revision: int | None = None
    key: str | None = None
    value: dict[str, Any] | None = None
    instances: list[dict[str, Any]] | None = None
    endpoints: list[dict[str, Any]] | None = None
    apps: list[str] | None = None
    agents: list[dict[str, Any]] | None = None

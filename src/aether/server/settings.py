"""Server configuration: flags, ``AETHER_*`` environment variables, defaults."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from aether.artifacts.s3 import S3ArtifactRegistry
    from aether.store.etcd import EtcdOptions

__all__ = ["ServerSettings", "loopback"]


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AETHER_", extra="ignore")

    data_dir: Path = Path("aether-data")
    host: str = "127.0.0.1"
    port: int = 7070
    public_url: str | None = None
    # -- trust: the cluster CA, the node port (mutual TLS), TLS for the API ---------------
    cluster_name: str = Field(
        default="aether",
        pattern=r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$",
        description="the SPIFFE trust domain: identities are spiffe://NAME/node/ID",
    )
    node_port: int = Field(
        default=0, ge=0, le=65535, description="where nodes call, mutual TLS only; 0: any free port"
    )
    node_public_url: str | None = Field(
        default=None,
        description="the node port's URL as nodes reach it (https://HOST:PORT); default: "
        "the API URL's host with the node port",
    )
    node_cert_seconds: float = Field(
        default=86400.0,
        ge=5,
        le=366 * 86400,
        description="lifetime of node and server certificates",
    )
    node_auth: Literal["mtls", "credential"] = Field(
        default="mtls",
        description="mtls: node calls need the node's certificate (the node port); credential: "
        "a node credential alone is also accepted on the API port (nodes from before "
        "certificates, while they are upgraded; insecure)",
    )
    ca_cert_file: str = Field(default="", description="a CA to use (PEM) when the cluster has none")
    ca_key_file: str = Field(default="", description="its private key (PEM, unencrypted)")
    tls_cert: str = Field(default="", description="serve the API over HTTPS with this certificate")
    tls_key: str = Field(default="", description="its private key")
    allow_plain_http: bool = Field(
        default=False,
        description="the API is plain HTTP beyond loopback on purpose (behind a proxy that "
        "terminates TLS): no warning at start",
    )
    tls_san: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="extra host names / addresses in the servers' certificates "
        "(AETHER_TLS_SAN: comma-separated)",
    )
    state_url: str | None = Field(default=None, description="default sqlite:///DATA/state.db")
    records_url: str | None = Field(default=None, description="default sqlite:///DATA/records.db")
    # -- the state store on etcd (state_url etcd://… or etcds://… for TLS) ----------------
    etcd_ca_file: str = Field(default="", description="PEM CA of the etcd members; empty: system")
    etcd_cert_file: str = Field(default="", description="client certificate for mutual TLS")
    etcd_key_file: str = Field(default="", description="its private key (PEM, unencrypted)")
    etcd_username: str = Field(default="", description="etcd user; empty: no authentication")
    etcd_password: str = ""
    etcd_timeout: float = Field(default=5.0, gt=0, le=60, description="seconds per etcd request")
    etcd_watch_idle_timeout: float = Field(
        default=3.0, gt=0, le=600, description="seconds a watch may be silent before a probe"
    )
    lease_ttl: float = Field(default=3.0, gt=0.2, le=120)
    reconcile_interval: float = Field(default=1.0, gt=0)
    max_artifact_bytes: int = 2 << 30
    # -- artifacts on S3 (default: the local directory DATA/artifacts) ---------------------
    artifacts_url: str = Field(
        default="", description="s3://bucket/prefix for an S3 artifact registry; empty: local"
    )
    s3_endpoint_url: str = Field(
        default="", description="S3-compatible endpoint (MinIO, Ceph, ...); empty: AWS"
    )
    s3_access_key: str = Field(default="", description="empty: the default AWS credential chain")
    s3_secret_key: str = ""
    s3_region: str = "us-east-1"
    s3_part_size: int = Field(default=8 << 20, ge=5 << 20, le=5 << 30)
    retain_deployments: int = Field(default=10, ge=1, description="artifacts kept per app")
    gc_grace_seconds: float = Field(default=3600.0, ge=0)
    gc_interval: float = Field(default=600.0, gt=0)
    queue_url: str | None = Field(
        default=None, description="redis://... for the Redis task queue; default: the records DB"
    )
    task_lease: float = Field(default=15.0, ge=2.0, description="seconds a task claim lasts")
    disabled_features: list[str] = Field(
        default_factory=list,
        description='node features the server never turns on, e.g. ["criu"] (handshake policy)',
    )
    telemetry_interval: float = Field(
        default=1.0, ge=0.1, le=60.0, description="seconds between a node's metrics pushes"
    )
    metrics_retention_days: float = Field(
        default=7.0, gt=0, description="days the per-minute telemetry roll-ups are kept"
    )
    audit_retention_days: float = Field(
        default=365.0, gt=0, description="days audit events are kept (the leader's GC trims)"
    )
    policy_enforcements_retention_days: float = Field(
        default=90.0, gt=0, description="days agents' policy decisions are kept (GC trims)"
    )
    agent_run_queue_timeout: float = Field(
        default=3600.0, gt=0, description="seconds a run may wait for a node before it expires"
    )
    agent_run_approval_timeout: float = Field(
        default=86400.0, gt=0, description="seconds a run may wait for an approval (then expired)"
    )
    alert_rules_file: Path | None = Field(
        default=None,
        description="JSON list of alert rules: each replaces the built-in rule of its name "
        "or adds one (docs/operations.md, Alerts and runbooks)",
    )
    alert_webhook_url: str = Field(
        default="", description="POST each firing/resolved alert here as JSON (retried)"
    )
    alert_interval: float = Field(default=5.0, gt=0, description="seconds between alert passes")
    alert_smtp_host: str = Field(
        default="", description="mail each firing/resolved alert via this SMTP server; empty: off"
    )
    alert_smtp_port: int = Field(default=25, ge=1, le=65535)
    alert_smtp_from: str = Field(default="", description="the alert emails' sender address")
    alert_smtp_to: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="the alert emails' recipients (AETHER_ALERT_SMTP_TO: comma-separated)",
    )
    alert_smtp_starttls: bool = Field(default=False, description="upgrade with STARTTLS first")
    alert_smtp_username: str = Field(default="", description="log in as this user (with STARTTLS)")
    alert_smtp_password: str = Field(default="", description="the SMTP login's password (secret)")
    metrics_window_seconds: int = Field(
        default=7200, ge=60, le=86400, description="seconds of per-second samples kept in memory"
    )
    max_concurrent_uploads: int = Field(default=32, ge=1, le=10_000)
    max_request_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        le=1 << 30,
        description="largest JSON request body; uploads have their own limits (413 above)",
    )
    log_retention_bytes: int = 10 << 20
    # -- migration: snapshots of stateful instances ---------------------------------------
    snapshot_keep: int = Field(default=20, ge=1, description="snapshots kept per app at most")
    migration_timeout: float = Field(
        default=600.0, gt=0, description="seconds after which an unfinished migration is failed"
    )
    rebalance_interval: float = Field(
        default=30.0,
        ge=0.0,
        description="seconds between two automatic rebalance moves; 0 turns the step off",
    )
    # -- the controller (layer 1) and its optional advisers (layers 2 and 3) --------------
    controller_enabled: bool = Field(default=True, description="autoscaling and risk drains")
    controller_interval: float = Field(default=1.0, ge=0.1, le=60.0)
    controller_undrain_after: float = Field(
        default=30.0, ge=0.0, description="seconds LOW before the controller undoes its drain"
    )
    controller_max_instances: int = Field(
        default=100, ge=1, le=1000, description="advisers' cap for apps without [autoscale]"
    )
    controller_min_interval: float = Field(
        default=10.0, ge=0.0, description="seconds between two adviser changes of one app"
    )
    decisions_retention: float = Field(
        default=7 * 86400.0, gt=0, description="seconds decisions are kept in the records"
    )
    adviser_tactical_url: str = Field(
        default="", description="OpenAI-compatible base URL (…/v1); the adviser is off when empty"
    )
    adviser_tactical_model: str = ""
    adviser_tactical_api_key: str = ""
    adviser_tactical_interval: float = Field(default=5.0, ge=2.0, le=60.0)
    adviser_strategic_url: str = Field(default="", description="as above, for drains and undrains")
    adviser_strategic_model: str = ""
    adviser_strategic_api_key: str = ""
    adviser_strategic_interval: float = Field(default=30.0, ge=2.0, le=60.0)
    adviser_timeout: float = Field(default=10.0, gt=0, le=60.0, description="seconds per call")
    memory_embedding_model: str = Field(
        default="",
        description="the name of a tenant's model (/api/v1/models) agent memory embeds with "
        "when a request names none; empty: vector search only with embedding_model=NAME",
    )
    console_session_hours: float = Field(
        default=12.0, gt=0, le=24 * 30, description="how long a console sign-in lasts"
    )
    events_resume_limit: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="store revisions (and rows per record source) an event stream resumes across",
    )

    # -- rate limits and quotas per tenant (cluster defaults; tenants may have their own) --
    rate_limit_per_minute: int = Field(
        default=1000, ge=1, le=10_000_000, description="API requests per minute per tenant"
    )
    rate_limit_burst: int = Field(
        default=200, ge=1, le=10_000_000, description="requests a tenant may send at once"
    )
    rate_limit_url: str | None = Field(
        default=None,
        description="redis://... for counters shared by several servers; default: the "
        "queue's Redis when AETHER_QUEUE_URL is one, else this server's memory",
    )
    quota_instances: int | None = Field(default=None, ge=0, description="None: unlimited")
    quota_cpu: float | None = Field(default=None, ge=0, description="cores reserved")
    quota_memory_mb: int | None = Field(default=None, ge=0, description="MiB reserved")
    quota_tasks: int | None = Field(default=None, ge=0, description="tasks queued and running")
    quota_sandboxes: int | None = Field(default=None, ge=0)
    quota_artifact_bytes: int | None = Field(default=None, ge=0)

    # -- accounts: passwords, a second factor, OpenID Connect --
    login_token_hours: float = Field(
        default=12.0, gt=0, le=24 * 90, description="how long a token from `aether login` lasts"
    )
    totp_required_for_admins: bool = Field(
        default=False,
        description="admins must give a TOTP code when they sign in with a password",
    )
    oidc_issuer: str = Field(default="", description="OpenID Connect issuer URL; empty: off")
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_scopes: str = "openid email profile"

    # -- secrets at rest (models' API keys) --
    secrets_key_file: str = Field(
        default="", description="the key sealing stored secrets; empty: DATA_DIR/secrets.key"
    )

    # -- agents --
    agent_tools_sync: bool = Field(
        default=False,
        description="POST /api/v1/tools/sync loads tool definitions from YAML; off: 404",
    )
    egress_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs (AETHER_EGRESS_ALLOW: comma-separated, e.g. 127.0.0.0/8,10.1.0.0/16) "
        "of loopback or private addresses models, memory embeddings and agents' tools may "
        "reach; empty: none",
    )

    @model_validator(mode="after")
    def _advisers(self) -> ServerSettings:
        for layer in ("tactical", "strategic"):
            url = getattr(self, f"adviser_{layer}_url")
            if not url:
                continue
            if not url.startswith(("http://", "https://")):
                raise ValueError(
                    f"AETHER_ADVISER_{layer.upper()}_URL must be an http(s) base URL such as "
                    f"http://127.0.0.1:8000/v1, not {url!r}"
                )
            if not getattr(self, f"adviser_{layer}_model"):
                raise ValueError(
                    f"AETHER_ADVISER_{layer.upper()}_MODEL is needed with "
                    f"AETHER_ADVISER_{layer.upper()}_URL: the model to ask"
                )
        return self

    @field_validator("tls_san", mode="before")
    @classmethod
    def _san_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key (AETHER_TLS_CERT/KEY) go together")
        if bool(self.ca_cert_file) != bool(self.ca_key_file):
            raise ValueError("AETHER_CA_CERT_FILE and AETHER_CA_KEY_FILE go together")
        return self

    @field_validator("alert_smtp_to", mode="before")
    @classmethod
    def _smtp_recipients(cls, value: Any) -> Any:
        """A comma-separated string (the environment's form) as a list of addresses."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _smtp(self) -> ServerSettings:
        if self.alert_smtp_host and (not self.alert_smtp_from or not self.alert_smtp_to):
            raise ValueError(
                "AETHER_ALERT_SMTP_HOST is set: AETHER_ALERT_SMTP_FROM (the sender) and "
                "AETHER_ALERT_SMTP_TO (comma-separated recipients) are needed too"
            )
        if self.alert_smtp_password and not self.alert_smtp_username:
            raise ValueError("AETHER_ALERT_SMTP_PASSWORD needs AETHER_ALERT_SMTP_USERNAME")
        return self

    @field_validator("egress_allow", mode="before")
    @classmethod
    def _egress_cidrs(cls, value: Any) -> Any:
        """A comma-separated string (the environment's form) as a list of CIDRs, each
        checked."""
        from aether.agents.egress import parse_networks

        cidrs = value.split(",") if isinstance(value, str) else value
        if not isinstance(cidrs, list):
            return value
        cidrs = [str(cidr).strip() for cidr in cidrs if str(cidr).strip()]
        try:
            parse_networks(cidrs)
        except ValueError as exc:
            raise ValueError(f"AETHER_EGRESS_ALLOW: {exc}") from None
        return cidrs

    @model_validator(mode="after")
    def _rate_limit(self) -> ServerSettings:
        if self.rate_limit_burst > self.rate_limit_per_minute:
            raise ValueError(
                f"AETHER_RATE_LIMIT_BURST ({self.rate_limit_burst}) may not exceed "
                f"AETHER_RATE_LIMIT_PER_MINUTE ({self.rate_limit_per_minute})"
            )
        if self.rate_limit_url and not self.rate_limit_url.startswith(("redis://", "rediss://")):
            raise ValueError(
                f"AETHER_RATE_LIMIT_URL must be a redis:// URL, not {self.rate_limit_url!r}"
            )
        return self

    @model_validator(mode="after")
    def _artifacts_store(self) -> ServerSettings:
        if self.artifacts_url:
            from aether.artifacts.s3 import parse_s3_url

            try:
                parse_s3_url(self.artifacts_url)
            except ValueError as exc:
                raise ValueError(f"AETHER_ARTIFACTS_URL: {exc}") from None
        if self.s3_endpoint_url and not self.s3_endpoint_url.startswith(("http://", "https://")):
            raise ValueError(
                "AETHER_S3_ENDPOINT_URL must be an http(s) URL such as http://127.0.0.1:9000, "
                f"not {self.s3_endpoint_url!r}"
            )
        if bool(self.s3_access_key) != bool(self.s3_secret_key):
            raise ValueError(
                "AETHER_S3_ACCESS_KEY and AETHER_S3_SECRET_KEY go together: set both, or neither "
                "to use the default AWS credential chain"
            )
        return self

    @model_validator(mode="after")
    def _etcd_state_store(self) -> ServerSettings:
        url = self.state_url or ""
        if not url.startswith(("etcd://", "etcds://")):
            return self
        from aether.store.etcd import etcd_tls_context, parse_etcd_url

        try:
            parsed = parse_etcd_url(url)
        except ValueError as exc:
            raise ValueError(f"AETHER_STATE_URL: {exc}") from None
        tls_files = self.etcd_ca_file or self.etcd_cert_file or self.etcd_key_file
        if tls_files and not url.startswith("etcds://"):
            raise ValueError(
                "AETHER_ETCD_CA_FILE, _CERT_FILE and _KEY_FILE are for TLS: write the state "
                f"store URL as etcds://{url.partition('://')[2]}"
            )
        if url.startswith("etcds://"):
            try:  # read the files now, so a bad one stops the start with its name
                etcd_tls_context(self.etcd_ca_file, self.etcd_cert_file, self.etcd_key_file)
            except ValueError as exc:
                raise ValueError(f"AETHER_ETCD_*_FILE: {exc}") from None
        if bool(self.etcd_username) != bool(self.etcd_password):
            raise ValueError("AETHER_ETCD_USERNAME and AETHER_ETCD_PASSWORD go together")
        if self.etcd_username and parsed.username:
            raise ValueError(
                "etcd credentials are given twice (in AETHER_STATE_URL and AETHER_ETCD_USERNAME):"
                " keep one"
            )
        return self

    def etcd_options(self) -> EtcdOptions:
        """What the etcd state store needs beyond ``state_url``."""
        from aether.store.etcd import EtcdOptions

        return EtcdOptions(
            ca_file=self.etcd_ca_file,
            cert_file=self.etcd_cert_file,
            key_file=self.etcd_key_file,
            username=self.etcd_username,
            password=self.etcd_password,
            timeout=self.etcd_timeout,
            watch_idle_timeout=self.etcd_watch_idle_timeout,
        )

    def s3_registry(self) -> S3ArtifactRegistry:
        """The (unopened) S3 registry ``artifacts_url`` names, with the ``s3_*`` settings."""
        from aether.artifacts.s3 import S3ArtifactRegistry, S3Config

        config = S3Config.from_url(
            self.artifacts_url,
            endpoint_url=self.s3_endpoint_url or None,
            access_key=self.s3_access_key or None,
            secret_key=self.s3_secret_key or None,
            region=self.s3_region,
            part_size=self.s3_part_size,
        )
        return S3ArtifactRegistry(config, max_bytes=self.max_artifact_bytes)

    def resolved_state_url(self) -> str:
        return self.state_url or f"sqlite:///{self.data_dir.resolve() / 'state.db'}"

    def resolved_records_url(self) -> str:
        return self.records_url or f"sqlite:///{self.data_dir.resolve() / 'records.db'}"

    def api_url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        return self.public_url or f"{scheme}://{self.host}:{self.port}"

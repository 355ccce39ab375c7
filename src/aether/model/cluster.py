"""The values kept under the state store's keys (see ARCHITECTURE.md)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from aether.model.app import AppSpec
from aether.model.lifecycle import Command, State
from aether.model.versioned import Versioned

__all__ = [
    "Blueprint",
    "DeploymentRef",
    "Endpoint",
    "InstanceRecord",
    "NodeCapabilities",
    "NodeRecord",
    "endpoint_key",
    "instance_endpoint_keys",
    "instance_key",
    "parse_instance_key",
    "routes_key",
]


class NodeCapabilities(BaseModel):
    """What a node reports at registration (the handshake's question)."""

    cpus: float
    memory_mb: int
    drivers: list[str]
    sandbox_drivers: list[str] = Field(default_factory=list)
    kernel: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    cgroup: Literal["v2", "v1", "none"] = "none"  # a writable cgroup hierarchy, if any
    criu: bool = False  # `criu check` passed
    criu_detail: str = ""  # why not, when it did not
    bwrap: bool = False
    kvm: bool = False  # /dev/kvm usable for hardware virtualisation
    features: list[str] = Field(default_factory=list)  # protocol features the node speaks
    # how app instances are confined: "bwrap" (sandboxed), "none" (plain processes, by
    # the node's explicit policy), "unavailable" (sandboxing was asked but does not work
    # here: the node runs no instances); older nodes say nothing: "none"
    isolation: Literal["bwrap", "none", "unavailable"] = "none"
    isolation_detail: str = ""  # how, or why not
    limits: dict[str, str] = Field(default_factory=dict)  # enforced: memory, cpu, processes


class NodeRecord(Versioned):
    """Value of ``nodes/{node}``, bound to the node's lease."""

    SCHEMA_NAME: ClassVar[str] = "node"

    id: str
    capabilities: NodeCapabilities
    router_url: str
    draining: bool = False
    drain_reason: str = ""
    drained_by: str = ""  # operator | controller | adviser (who may undrain it)
    registered_at: float = 0.0
    config: dict[str, bool] = Field(default_factory=dict)  # features the server turned on
    version: str | None = None  # the node's aether version (None: 0.1.0 and older)


class DeploymentRef(BaseModel):
    """A deployment as the blueprint needs it: enough to run it again."""

    deployment_id: str
    version: int
    digest: str
    spec: AppSpec


class Blueprint(Versioned):
    """Value of ``blueprints/{app}``: the desired state of one app.

    While a rollout runs, ``previous`` is the deployment being replaced (the
    last healthy one), kept so a failed rollout can revert to it.
    """

    SCHEMA_NAME: ClassVar[str] = "blueprint"

    model_config = ConfigDict(extra="ignore")

    app: str
    tenant: str
    deployment_id: str
    version: int
    digest: str
    spec: AppSpec
    instances: int
    strategy: Literal["spread", "binpack"] = "spread"
    previous: DeploymentRef | None = None
    rollout_started_at: float = 0.0
    promoted: bool = False
    traceparent: str | None = None  # the deploy request's span (aether.tracing), if traced

    def ref(self) -> DeploymentRef:
        return DeploymentRef(
            deployment_id=self.deployment_id,
            version=self.version,
            digest=self.digest,
            spec=self.spec,
        )


class InstanceRecord(Versioned):
    """Value of ``instances/{node}/{app}@{version}/{n}``.

    ``command`` is written by the leader, ``state`` and ``message`` by the node.
    """

    SCHEMA_NAME: ClassVar[str] = "instance"

    app: str
    version: int
    n: int
    node: str
    tenant: str
    deployment_id: str
    digest: str
    spec: AppSpec
    command: Command
    state: State | None = None
    message: str = ""
    url: str | None = None
    request_id: str = ""
    traceparent: str | None = None  # its deployment's span (aether.tracing), if traced
    placed_at: float = 0.0
    active_since: float | None = None
    # migration (see core.scheduler): the operator asks, the leader drives, the node reports
    migrate_to: str | None = None  # move this instance: "" = anywhere, else that node's id
    migration_id: str = ""  # the migration moving it (kept on its replacement, for tracking)
    checkpoint: bool = False  # leader → node: checkpoint the state when you stop it
    snapshot: str | None = None  # node → leader: digest of the snapshot it stored
    restore_from: str | None = None  # leader → node: restore this snapshot before start
    # operator → leader: the migration's replacement restores this snapshot (an orphan
    # brought back by `aether snapshots restore`) instead of the checkpoint it takes
    restore: str | None = None
    # a slice's entry points, as its ACTIVE report named them: the endpoints it has
    # (``instance_endpoint_keys``); an ordinary app has none and one endpoint, ``web``
    entries: list[str] = Field(default_factory=list)

    @property
    def key(self) -> str:
        return instance_key(self.node, self.app, self.version, self.n)


class Endpoint(Versioned):
    """Value of ``endpoints/{app}/{entry}/{node}:{n}``, bound to the node's lease.

    An ordinary app's one endpoint has the entry ``web`` and no ``schema``; a slice
    instance has one endpoint per entry point, whose ``schema`` is that entry's
    ``$describe`` item (params, returns, idempotent, batch: ``aether.slices.wire``).
    That key is older than schema versions (0.1.0's nodes read it as a dict), so the
    record's own version is its ``schema_version``.
    """

    SCHEMA_NAME: ClassVar[str] = "endpoint"
    SCHEMA_KEY: ClassVar[str] = "schema_version"  # its ``schema`` predates versions

    schema_version: int = Field(default=1, ge=1)

    app: str
    entry: str = "web"
    node: str
    n: int
    version: int
    url: str
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    @property
    def is_slice(self) -> bool:
        return self.schema_ is not None

    @property
    def idempotent(self) -> bool:
        return bool(self.schema_ and self.schema_.get("idempotent"))


def instance_endpoint_keys(record: InstanceRecord) -> list[str]:
    """Every endpoint key the instance may hold: ``web`` and one per slice entry point."""
    entries = ["web", *(e for e in record.entries if e != "web")]
    return [endpoint_key(record.app, entry, record.node, record.n) for entry in entries]


def instance_key(node: str, app: str, version: int, n: int) -> str:
    return f"instances/{node}/{app}@{version}/{n}"


def parse_instance_key(key: str) -> tuple[str, str, int, int]:
    """``instances/{node}/{app}@{version}/{n}`` → (node, app, version, n)."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "instances" or "@" not in parts[2]:
        raise ValueError(f"not an instance key: {key!r}")
    app, _, version = parts[2].rpartition("@")
    return parts[1], app, int(version), int(parts[3])


def endpoint_key(app: str, entry: str, node: str, n: int) -> str:
    return f"endpoints/{app}/{entry}/{node}:{n}"


def routes_key(node: str) -> str:
    """What the node's router applied (``RoutesIn``), on the node's lease."""
    return f"routes/{node}"

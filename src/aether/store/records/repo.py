"""Queries on the records database. Every tenant-owned query takes the tenant.

``Records`` is composed of one part per kind of record (``store/records/<part>.py``),
so callers hold one object; the parts share ``RecordsBase`` (the sessions) and the
helpers in ``store/records/base.py``.
"""

from __future__ import annotations

from aether.store.records.agent_policies import AgentPolicyRecords
from aether.store.records.agents import AgentRecords
from aether.store.records.alerts import AlertRecords
from aether.store.records.apps import AppRecords
from aether.store.records.artifacts import ArtifactRecords
from aether.store.records.audit import AuditRecords
from aether.store.records.base import DEFAULT_TENANT, Principal, epoch, hash_token, now, utc
from aether.store.records.console import ConsoleRecords
from aether.store.records.credentials import CredentialRecords
from aether.store.records.decisions import DecisionRecords
from aether.store.records.deployments import DeploymentRecords
from aether.store.records.events import EventRecords
from aether.store.records.idempotency import IdempotencyRecords
from aether.store.records.limits import LimitRecords
from aether.store.records.models import ModelRecords
from aether.store.records.nodes import NodeRecords
from aether.store.records.plugins import PluginRecords
from aether.store.records.retention import RetentionRecords
from aether.store.records.risk import RiskRecords
from aether.store.records.rollups import RollupRecords
from aether.store.records.runs import RunRecords
from aether.store.records.sandboxes import SandboxRecords
from aether.store.records.secrets import SecretRecords
from aether.store.records.signing import SigningRecords
from aether.store.records.snapshots import SnapshotRecords
from aether.store.records.users import UserRecords

__all__ = ["DEFAULT_TENANT", "Principal", "Records", "epoch", "hash_token", "now", "utc"]


class Records(
    CredentialRecords,  # and TenantRecords, which it builds on
    AppRecords,
    AgentPolicyRecords,
    AgentRecords,
    AlertRecords,
    ArtifactRecords,
    AuditRecords,
    ConsoleRecords,
    DeploymentRecords,
    EventRecords,
    IdempotencyRecords,
    LimitRecords,
    ModelRecords,
    NodeRecords,
    PluginRecords,
    DecisionRecords,
    SigningRecords,
    RetentionRecords,
    SandboxRecords,
    SecretRecords,
    RiskRecords,
    RollupRecords,
    RunRecords,
    SnapshotRecords,
    UserRecords,
):
    """The records repository: every query, one object."""

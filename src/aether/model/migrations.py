"""Bodies of the migration and snapshot API, shared by server, CLI and tests."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field

from aether.model.time import Timestamp
from aether.model.versioned import Versioned

__all__ = [
    "MIGRATION_FINAL",
    "MigrateIn",
    "MigrationKind",
    "MigrationOut",
    "MigrationStatus",
    "SnapshotKind",
    "SnapshotOut",
    "SnapshotRestoreIn",
    "SnapshotStatus",
]

MigrationKind = Literal["stateless", "stateful"]
MigrationStatus = Literal["requested", "checkpointing", "restoring", "done", "failed"]
SnapshotKind = Literal["cooperative", "criu", "periodic", "orphaned"]
#: ``stored``: a checkpoint; ``orphaned``: the newer state of an instance its node held
#: after a replacement started elsewhere; ``restored``: an orphan brought back.
SnapshotStatus = Literal["stored", "orphaned", "restored"]

#: A migration in one of these states changes no more.
MIGRATION_FINAL: frozenset[str] = frozenset({"done", "failed"})


class MigrateIn(BaseModel):
    """``POST /api/v1/instances/migrate``: move ``instance`` (its key, or ``APP/N``)."""

    instance: Annotated[str, Field(min_length=1, max_length=400)]
    to: Annotated[str, Field(min_length=1, max_length=128)] | None = None  # None: any other node


class MigrationOut(BaseModel):
    id: str
    app: str
    instance: str  # the key of the instance that moves
    from_node: str
    to_node: str | None  # the target asked for, then the node its replacement runs on
    kind: MigrationKind
    status: MigrationStatus
    snapshot: str | None  # stateful: the digest of the checkpoint it was restored from
    replacement: str | None  # the key of the new instance, once placed
    reason: str
    started_at: Timestamp
    finished_at: Timestamp | None


class SnapshotOut(Versioned):
    """A stored snapshot: the answer to a node's snapshot upload (and the snapshot API's)."""

    SCHEMA_NAME: ClassVar[str] = "snapshot"

    id: str
    app: str
    instance: str
    node: str
    digest: str
    size_bytes: int
    kind: SnapshotKind
    tier: Literal["hot", "warm", "cold", "expired"]
    status: SnapshotStatus = "stored"
    created_at: Timestamp
    # when the state was last known to be this (periodic: the newest checkpoint that
    # found it unchanged; orphaned: when the old instance was last able to take writes)
    taken_at: Timestamp | None = None


class SnapshotRestoreIn(BaseModel):
    """``POST /api/v1/apps/{app}/snapshots/{digest}/restore``: which instance (``n``)
    to replace; None: the app's first serving instance."""

    n: Annotated[int, Field(ge=0, le=100_000)] | None = None

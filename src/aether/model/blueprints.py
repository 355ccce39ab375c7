"""Blueprint files: several deployed apps (slices among them) with their instance
counts, applied in one go (``PUT /api/v1/blueprint-files/{name}``, ``aether blueprint``).

A blueprint file (TOML, YAML or JSON)::

    name = "shop"
    [apps.catalog]
    instances = 2
    [apps.cart]
    instances = 1
    version = 3   # optional: pin a deployed version (default: the one running)

Applying it sets every app's desired instance count (and, for a pinned version that
is not the one running, starts a rollback to it) in one state-store transaction, so
the leader plans them together. The applied file is kept (``BlueprintRecord``, under
``blueprint-files/{tenant_id}/{name}``) until ``aether blueprint rm``.

Not to be confused with ``model.cluster.Blueprint``: one app's desired state under
``blueprints/{app}``, which applying a blueprint file changes.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from aether.model.app import APP_NAME_RE
from aether.model.time import Timestamp
from aether.model.versioned import Versioned

__all__ = [
    "BLUEPRINT_NAME_PATTERN",
    "MAX_BLUEPRINT_APPS",
    "BlueprintAppIn",
    "BlueprintAppOut",
    "BlueprintDeletedOut",
    "BlueprintFile",
    "BlueprintOut",
    "BlueprintRecord",
    "blueprint_file_key",
]

#: a blueprint's name: as an app's (lower-case letters, digits, '-'; up to 63)
BLUEPRINT_NAME_PATTERN = APP_NAME_RE.pattern
#: the most apps one blueprint names (one state-store transaction changes them all)
MAX_BLUEPRINT_APPS = 50


class BlueprintAppIn(BaseModel):
    """One app of a blueprint file."""

    model_config = ConfigDict(extra="forbid")

    instances: Annotated[int, Field(ge=0, le=1000)]
    #: a deployed version to run (default: the one running)
    version: Annotated[int | None, Field(ge=1)] = None


class BlueprintFile(BaseModel):
    """A blueprint file as sent: its ``name`` (optional in the body; the path's) and apps."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str | None, Field(pattern=BLUEPRINT_NAME_PATTERN)] = None
    apps: Annotated[
        dict[Annotated[str, Field(pattern=BLUEPRINT_NAME_PATTERN)], BlueprintAppIn],
        Field(min_length=1, max_length=MAX_BLUEPRINT_APPS),
    ]


class BlueprintRecord(Versioned):
    """The value of ``blueprint-files/{tenant_id}/{name}``: the file as last applied."""

    SCHEMA_NAME: ClassVar[str] = "blueprint_file"

    name: str
    tenant: str  # the tenant's id
    apps: dict[str, BlueprintAppIn]
    applied_at: float
    applied_by: str  # "user:NAME", "token:ID"


class BlueprintAppOut(BaseModel):
    """One app of a blueprint: what the file asks, and what the app runs now."""

    instances: int
    version: int | None = None  # the pinned version, if any
    version_now: int | None = None  # the running deployment's (None: no longer deployed)
    instances_desired: int = 0  # now (an `aether scale` since may have changed it)
    instances_active: int = 0


class BlueprintOut(BaseModel):
    name: str
    apps: dict[str, BlueprintAppOut]
    applied_at: Timestamp
    applied_by: str


class BlueprintDeletedOut(BaseModel):
    name: str
    deleted: bool = True
    scaled_to_zero: list[str] = Field(default_factory=list)  # with ?scale_to_zero=true


def blueprint_file_key(tenant_id: str, name: str) -> str:
    return f"blueprint-files/{tenant_id}/{name}"

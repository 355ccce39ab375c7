"""Tenants: the API's request and response bodies (``/api/v1/tenants``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from aether.model.time import Timestamp

__all__ = [
    "TENANT_NAME_PATTERN",
    "TenantDeletedOut",
    "TenantIn",
    "TenantOut",
    "TenantPatch",
]

#: like an app name: 1-63 lower-case letters, digits and '-' (no '.': a tenant's app is
#: ``{app}.{tenant}`` inside the cluster, so neither part may contain a dot)
TENANT_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

DisplayName = Annotated[str, Field(max_length=128)]
Description = Annotated[str, Field(max_length=1024)]


class TenantIn(BaseModel):
    name: Annotated[str, Field(pattern=TENANT_NAME_PATTERN)]
    display_name: DisplayName = ""
    description: Description = ""
    #: mint the tenant's first admin token and return it once (``admin_token`` below)
    admin_token: bool = True


class TenantPatch(BaseModel):
    display_name: DisplayName | None = None
    description: Description | None = None


class TenantOut(BaseModel):
    name: str
    display_name: str
    description: str
    created_at: Timestamp
    apps: int = 0  # apps not deleted
    instances: int = 0  # instances in the state store (any state)
    tasks: int = 0  # tasks not finished (pending, scheduled, active, retry)
    sandboxes: int = 0  # sandboxes not deleted or failed
    admin_token: str | None = None  # only in the answer to POST, when asked for


class TenantDeletedOut(BaseModel):
    name: str
    forced: bool
    apps_deleted: int
    instances_stopping: int
    tasks_cancelled: int
    sandboxes_deleted: int
    tokens_revoked: int
    artifacts_deleted: int

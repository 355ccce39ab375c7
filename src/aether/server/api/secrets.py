"""A tenant's named secrets: ``/secrets`` (the headers of http tools, what policies
redact, the env and files of app instances).

Viewers list the names, timestamps and the apps that use each; admins set and
remove. A value is never returned to a user, logged or audited (the audit event
names the secret only); another tenant's secret is a 404. The cluster admin rotates
the key-encryption key (``POST /secrets:rotate-key``).

The one route that answers values is a node's: ``GET /nodes/{node}/instances/
{app}@{version}/{n}/secrets``, only to that node's own credential (another node's is
a 403 with an audit line, a user's token a 403) and only for an instance placed on
it (else 404); a secret the app references that is not set is a 409 naming it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel

from aether.errors import ConflictError, NotFoundError
from aether.model.api import InstanceSecretsOut
from aether.model.cluster import Blueprint, InstanceRecord, instance_key
from aether.model.secrets import (
    SECRET_NAME_PATTERN,
    KeyRotationOut,
    SecretDeletedOut,
    SecretIn,
    SecretOut,
)
from aether.model.tasks import TaskState
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Admin, Caller, ClusterAdmin, NodeCaller, own_node
from aether.server.services.secrets import (
    delete_secret,
    missing_secret,
    put_secret,
    rotate_key,
    secret_out,
    tenant_secrets,
)

__all__ = ["router"]

router = APIRouter(tags=["secrets"])
Ctx = Annotated[ServerContext, Depends(get_context)]
Name = Annotated[str, Path(pattern=SECRET_NAME_PATTERN)]


async def _users(ctx: ServerContext, tenant_id: str) -> dict[str, list[str]]:
    """Secret name -> the tenant's apps whose blueprint references it."""
    kvs, _ = await ctx.store.range("blueprints/")
    used: dict[str, list[str]] = {}
    for kv in kvs:
        blueprint = Blueprint.model_validate_json(kv.value)
        if blueprint.tenant != tenant_id:
            continue
        for name in blueprint.spec.secrets.names():
            used.setdefault(name, []).append(blueprint.app)
    return used


@router.get("/secrets")
async def list_secrets(caller: Caller, ctx: Ctx) -> list[SecretOut]:
    """The tenant's secrets: names, timestamps and the apps using each, never values."""
    used = await _users(ctx, caller.tenant_id)
    rows = await ctx.records.list_secrets(caller.tenant_id)
    return [secret_out(row, sorted(used.get(row.name, []))) for row in rows]


@router.post("/secrets:rotate-key")
async def rotate_secrets_key(caller: ClusterAdmin, ctx: Ctx) -> KeyRotationOut:
    """Replace the key-encryption key and re-wrap every stored data key (cluster admin)."""
    return await rotate_key(ctx)


@router.get("/nodes/{node}/instances/{app_version}/{n}/secrets")
async def instance_secrets(
    node: str,
    app_version: str,
    n: int,
    request: Request,
    caller: NodeCaller,
    ctx: Ctx,
    response: Response,
) -> InstanceSecretsOut:
    """The values an instance placed on this node references (its node only)."""
    own_node(request, caller, node)
    app, _, version = app_version.rpartition("@")
    key = instance_key(node, app, int(version) if version.isdigit() else -1, n)
    kv = await ctx.store.get(key)
    if kv is None:
        raise NotFoundError(f"instance {key} is not placed on node {node}")
    record = InstanceRecord.model_validate_json(kv.value)
    wanted = record.spec.secrets
    values = await tenant_secrets(ctx, record.tenant, wanted.names())
    reason = missing_secret(wanted.names(), values)
    if reason is not None:
        raise ConflictError(reason)
    response.headers["Cache-Control"] = "no-store"
    return InstanceSecretsOut(
        env={env: values[name] for env, name in wanted.env.items()},
        files={path: values[name] for path, name in wanted.files.items()},
    )


@router.put("/secrets/{name}", responses={201: {"description": "a new secret"}})
async def set_secret(
    name: Name, body: SecretIn, caller: Admin, ctx: Ctx, response: Response
) -> SecretOut:
    """Set a secret (stored encrypted): 201 when it is new, 200 when it replaced one."""
    out, created = await put_secret(ctx, caller.tenant_id, name, body.value.get_secret_value())
    response.status_code = 201 if created else 200
    return out


@router.delete("/secrets/{name}")
async def remove_secret(name: Name, caller: Admin, ctx: Ctx) -> SecretDeletedOut:
    await delete_secret(ctx, caller.tenant_id, name)
    return SecretDeletedOut(name=name)


class TaskSecretsOut(BaseModel):
    """What a node puts in a task's command environment."""

    env: dict[str, str]


@router.get("/tasks/{task_id}/secrets")
async def task_secrets(
    task_id: str,
    request: Request,
    caller: NodeCaller,
    ctx: Ctx,
    response: Response,
    node: Annotated[str, Query(max_length=255)],
    attempt: Annotated[int, Query(ge=1)],
) -> TaskSecretsOut:
    """The values a running task's payload names in ``secrets``: only to the node that
    holds this attempt's claim (another node, another attempt or a finished task: 404)."""
    own_node(request, caller, node)
    task = await ctx.queue.get(task_id)
    if task.claimed_by != node or task.state is not TaskState.ACTIVE or task.attempts != attempt:
        raise NotFoundError(f"task {task_id} is not running on node {node}")
    refs = task.payload.get("secrets") or {}
    if not isinstance(refs, dict) or not refs:
        return TaskSecretsOut(env={})
    history = await ctx.queue.history(task_id)
    if not history:
        raise NotFoundError(f"task {task_id} has no history")
    names = sorted({str(name) for name in refs.values()})
    values = await tenant_secrets(ctx, history[0].tenant_id, names)
    reason = missing_secret(names, values)
    if reason is not None:
        raise ConflictError(reason)
    response.headers["Cache-Control"] = "no-store"
    return TaskSecretsOut(env={str(env): values[str(name)] for env, name in refs.items()})

"""Blueprint files: ``/blueprint-files`` (several deployed apps and slices with their
instance counts, applied in one go; see ``model.blueprints``). Not ``/blueprints``:
that is each app's desired state (``api.cluster``), which applying a file changes.

Viewers list and read; operators and admins apply and remove. Every app a file
names must be deployed in the caller's tenant already (else a 400 naming them, and
nothing changes); quotas apply as for ``scale``. Applying writes every app's
``blueprints/{app}`` and the file's record in one state-store transaction, with a
compare on each app's blueprint: the leader sees all the changes at once, and a
concurrent change to any of them makes the apply read again and retry. A pinned
version that is not the one running starts a rollback to it (a new deployment, as
``aether rollback --version`` does), in that same transaction. Another tenant's
blueprint is the 404 of one that does not exist. Applies and removals are audited
as every write is.
"""

from __future__ import annotations

import hashlib
import json
import time
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import ValidationError

from aether.errors import BadRequestError, ConflictError, NotFoundError
from aether.model.app import AppSpec
from aether.model.blueprints import (
    BLUEPRINT_NAME_PATTERN,
    BlueprintAppIn,
    BlueprintAppOut,
    BlueprintDeletedOut,
    BlueprintFile,
    BlueprintOut,
    BlueprintRecord,
    blueprint_file_key,
)
from aether.model.cluster import Blueprint
from aether.server.api.apps import in_cluster, prepare_deployment
from aether.server.context import ServerContext, get_context
from aether.server.http.audit import actor_of
from aether.server.http.auth import Caller, Operator
from aether.server.http.idempotency import request_key
from aether.server.services.cluster import ClusterSnapshot, dump, read_snapshot
from aether.server.services.quotas import app_reservation, enforce_quota
from aether.store.base import Compare, Delete, Kv, Op, Put
from aether.store.records import Principal

__all__ = ["router"]

router = APIRouter(tags=["blueprints"])
Ctx = Annotated[ServerContext, Depends(get_context)]
Name = Annotated[str, Path(pattern=BLUEPRINT_NAME_PATTERN, description="the blueprint")]

_TRIES = 10
_FILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "apps": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "instances": {"type": "integer", "minimum": 0, "maximum": 1000},
                    "version": {"type": "integer", "minimum": 1},
                },
                "required": ["instances"],
            },
        },
    },
    "required": ["apps"],
}
_APPLY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/toml": {"schema": {"type": "string"}},
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": _FILE_SCHEMA},
        },
    }
}


def _kind(content_type: str) -> str:
    """The blueprint file's format by the request's content type (JSON by default)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media.endswith("toml"):
        return "toml"
    if media.endswith("yaml") or media.endswith("yml"):
        return "yaml"
    return "json"


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}"
        for err in exc.errors()[:10]
    )


def parse_blueprint_file(text: str, kind: str) -> BlueprintFile:
    """The blueprint of a file's ``text``; ``kind`` is ``toml``, ``yaml`` or ``json``.

    ``ValueError`` says what is wrong (the API answers it as a 400).
    """
    data: Any
    if kind == "yaml":
        import yaml  # the server's dependency; imported only for a YAML file

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"not valid YAML: {exc}") from None
    else:
        try:  # TOMLDecodeError and JSONDecodeError are ValueErrors
            data = tomllib.loads(text) if kind == "toml" else json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not valid {kind.upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"a blueprint file is a {kind.upper()} table with name and [apps.NAME]")
    try:
        return BlueprintFile.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"invalid blueprint: {_problems(exc)}") from None


async def _read_file(request: Request, name: str) -> BlueprintFile:
    raw = await request.body()
    try:
        text = raw.decode()
        file = parse_blueprint_file(text, _kind(request.headers.get("content-type", "")))
    except UnicodeDecodeError:
        raise BadRequestError("the blueprint file is not UTF-8 text") from None
    except ValueError as exc:
        raise BadRequestError(str(exc)) from None
    if file.name is not None and file.name != name:
        raise BadRequestError(
            f"the file is blueprint {file.name!r}, not {name!r}: apply it under its own name"
        )
    return file


@dataclass
class _Plan:
    compares: list[Compare] = field(default_factory=list)
    puts: list[Op] = field(default_factory=list)
    scaled: list[tuple[str, Blueprint, int]] = field(default_factory=list)  # (app, before, after)


async def _deployed(
    ctx: ServerContext, caller: Principal, apps: list[str]
) -> dict[str, tuple[Blueprint, Kv]]:
    """The caller's blueprints of ``apps``; a 400 naming those it has not deployed."""
    found: dict[str, tuple[Blueprint, Kv]] = {}
    for app in apps:
        kv = await ctx.store.get(f"blueprints/{in_cluster(caller, app)}")
        bp = Blueprint.model_validate_json(kv.value) if kv is not None else None
        if kv is not None and bp is not None and bp.tenant == caller.tenant_id:
            found[app] = (bp, kv)
    missing = sorted(set(apps) - found.keys())
    if missing:
        raise BadRequestError(
            f"not deployed in this tenant: {', '.join(missing)}; deploy them first "
            "(`aether deploy`); nothing was changed"
        )
    return found


async def _pinned_spec(
    ctx: ServerContext, caller: Principal, app: str, bp: Blueprint, version: int
) -> tuple[str, AppSpec] | None:
    """The (digest, spec) a pin to ``version`` rolls back to; None when the app runs it
    already (that version, or a rollback to it)."""
    if version == bp.version:
        return None
    if (
        await ctx.records.get_deployment(caller.tenant_id, bp.deployment_id)
    ).rollback_of == version:
        return None
    row = await ctx.records.get_app(caller.tenant_id, app)
    found = [
        d for d in await ctx.records.list_deployments(caller.tenant_id, row) if d.version == version
    ]
    if not found:
        raise BadRequestError(f"app {app!r} has no version {version}; nothing was changed")
    return found[0].digest, AppSpec.model_validate(found[0].spec)


def _request_key(key: str, app: str) -> str:
    """The deployment request key of one app's rollback within one apply."""
    return "blueprint:" + hashlib.sha256(f"{key}\0{app}".encode()).hexdigest()[:40]


async def _plan(
    ctx: ServerContext, caller: Principal, apps: Mapping[str, BlueprintAppIn], key: str
) -> _Plan:
    """What applying ``apps`` writes: a compare and a put per app (a rollback recorded
    first where a pin asks for one)."""
    current = await _deployed(ctx, caller, sorted(apps))
    pins = {
        app: await _pinned_spec(ctx, caller, app, current[app][0], want.version)
        for app, want in apps.items()
        if want.version is not None
    }
    asked: dict[str, float] = {}
    for app, want in apps.items():
        bp = current[app][0]
        pinned = pins.get(app)
        spec = pinned[1] if pinned is not None else bp.spec
        new = app_reservation(want.instances, spec.resources.cpu, spec.resources.memory_mb)
        old = app_reservation(bp.instances, bp.spec.resources.cpu, bp.spec.resources.memory_mb)
        for quota in new:
            asked[quota] = asked.get(quota, 0) + new[quota] - old[quota]
    await enforce_quota(ctx, caller.tenant_id, asked)
    plan = _Plan()
    for app, want in sorted(apps.items()):
        bp, kv = current[app]
        plan.compares.append(Compare(kv.key, "mod_revision", "==", kv.mod_revision))
        pinned = pins.get(app)
        updated: Blueprint | None = None
        if pinned is not None:
            _, updated = await prepare_deployment(
                ctx,
                caller,
                app,
                digest=pinned[0],
                spec=pinned[1],
                instances=want.instances,
                rollback_of=want.version,
                request_key=_request_key(key, app),
            )
        if updated is None:
            updated = bp.model_copy(update={"instances": want.instances})
            if bp.instances != want.instances:
                plan.scaled.append((app, bp, want.instances))
        plan.puts.append(Put(kv.key, dump(updated)))
    return plan


def _app_out(
    snap: ClusterSnapshot, caller: Principal, app: str, want: BlueprintAppIn
) -> BlueprintAppOut:
    entry = snap.blueprints.get(in_cluster(caller, app))
    bp = entry[0] if entry is not None and entry[0].tenant == caller.tenant_id else None
    return BlueprintAppOut(
        instances=want.instances,
        version=want.version,
        version_now=bp.version if bp else None,
        instances_desired=bp.instances if bp else 0,
        instances_active=snap.active_count(bp.app, bp.version) if bp else 0,
    )


def _out(snap: ClusterSnapshot, caller: Principal, record: BlueprintRecord) -> BlueprintOut:
    return BlueprintOut(
        name=record.name,
        apps={app: _app_out(snap, caller, app, want) for app, want in sorted(record.apps.items())},
        applied_at=datetime.fromtimestamp(record.applied_at, UTC),
        applied_by=record.applied_by,
    )


async def _record(ctx: ServerContext, caller: Principal, name: str) -> tuple[BlueprintRecord, Kv]:
    kv = await ctx.store.get(blueprint_file_key(caller.tenant_id, name))
    if kv is None:  # another tenant's is under its own tenant id: never found here
        raise NotFoundError(f"blueprint {name!r} not found; `aether blueprint ls` lists yours")
    return BlueprintRecord.model_validate_json(kv.value), kv


@router.get("/blueprint-files")
async def list_blueprints(caller: Caller, ctx: Ctx) -> list[BlueprintOut]:
    """The tenant's applied blueprint files, by name, with what their apps run now."""
    kvs, _ = await ctx.store.range(blueprint_file_key(caller.tenant_id, ""))
    snap = await read_snapshot(ctx.store)
    records = sorted(
        (BlueprintRecord.model_validate_json(kv.value) for kv in kvs), key=lambda r: r.name
    )
    return [_out(snap, caller, record) for record in records]


@router.get("/blueprint-files/{blueprint}")
async def get_blueprint(blueprint: Name, caller: Caller, ctx: Ctx) -> BlueprintOut:
    record, _ = await _record(ctx, caller, blueprint)
    return _out(await read_snapshot(ctx.store), caller, record)


@router.put("/blueprint-files/{blueprint}", openapi_extra=_APPLY_BODY)
async def apply_blueprint(
    blueprint: Name, request: Request, caller: Operator, ctx: Ctx
) -> BlueprintOut:
    """Apply a blueprint file (TOML, YAML or JSON, by ``Content-Type``): every app's
    instance count (and pinned version) in one transaction; the file is kept."""
    name = blueprint
    file = await _read_file(request, name)
    key = request_key(request) or uuid.uuid4().hex  # one apply: one rollback per pin
    kind, actor = actor_of(caller)
    record = BlueprintRecord(
        name=name,
        tenant=caller.tenant_id,
        apps=file.apps,
        applied_at=time.time(),
        applied_by=f"{kind}:{actor}",
    )
    for _ in range(_TRIES):
        plan = await _plan(ctx, caller, file.apps, key)
        ops = [*plan.puts, Put(blueprint_file_key(caller.tenant_id, name), dump(record))]
        if (await ctx.store.txn(plan.compares, ops)).succeeded:
            for _app, before, after in plan.scaled:
                await ctx.records.add_event(
                    before.deployment_id,
                    "scaled",
                    f"instances {before.instances} → {after} (blueprint {name})",
                )
            return _out(await read_snapshot(ctx.store), caller, record)
    raise ConflictError("the apps' blueprints kept changing; apply it again")


@router.delete("/blueprint-files/{blueprint}")
async def remove_blueprint(
    blueprint: Name, caller: Operator, ctx: Ctx, scale_to_zero: bool = False
) -> BlueprintDeletedOut:
    """Forget the blueprint file; with ``scale_to_zero`` also scale its apps (those
    still deployed) to 0 instances, in the same transaction."""
    name = blueprint
    for _ in range(_TRIES):
        record, kv = await _record(ctx, caller, name)
        compares = [Compare(kv.key, "mod_revision", "==", kv.mod_revision)]
        ops: list[Op] = [Delete(kv.key)]
        scaled: list[tuple[str, Blueprint]] = []
        if scale_to_zero:
            for app in sorted(record.apps):
                app_kv = await ctx.store.get(f"blueprints/{in_cluster(caller, app)}")
                if app_kv is None:
                    continue
                bp = Blueprint.model_validate_json(app_kv.value)
                if bp.tenant != caller.tenant_id:
                    continue
                compares.append(Compare(app_kv.key, "mod_revision", "==", app_kv.mod_revision))
                ops.append(Put(app_kv.key, dump(bp.model_copy(update={"instances": 0}))))
                scaled.append((app, bp))
        if (await ctx.store.txn(compares, ops)).succeeded:
            for _app, bp in scaled:
                if bp.instances:
                    await ctx.records.add_event(
                        bp.deployment_id,
                        "scaled",
                        f"instances {bp.instances} → 0 (blueprint {name} removed)",
                    )
            return BlueprintDeletedOut(name=name, scaled_to_zero=[app for app, _ in scaled])
    raise ConflictError("the blueprint kept changing; remove it again")

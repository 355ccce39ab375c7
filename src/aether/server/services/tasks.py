"""Submitting tasks and recording their outcomes: the rules around the queue.

The queue (``aether.tasks.queue``) orders and leases work; this module decides
what a task is before it is queued (type, defaults, payload, placement) and
what its result means afterwards (a sandbox created or deleted, an execution
recorded).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from aether.errors import BadRequestError, ConflictError
from aether.model.tasks import TaskIn, TaskOut
from aether.server.context import ServerContext
from aether.server.services.quotas import enforce_quota
from aether.store.records import Principal
from aether.store.records.repo import now, utc
from aether.store.records.schema import Execution
from aether.tasks.queue.base import NewTask
from aether.tasks.types import (
    ExecutionResult,
    JobRunPayload,
    JobRunResult,
    VmCreatePayload,
    VmCreateResult,
    VmDeleteResult,
    lookup,
    registered,
)

__all__ = ["record_outcome", "submit_task"]


async def submit_task(ctx: ServerContext, caller: Principal, body: TaskIn) -> TaskOut:
    task_type = lookup(body.type)
    if task_type is None:
        raise BadRequestError(
            f"unknown task type {body.type!r}; known types: {', '.join(registered())}",
            code="unknown_task_type",
        )
    if task_type.internal:
        raise BadRequestError(
            f"tasks of type {body.type!r} are submitted by the server only",
            code="unknown_task_type",
        )
    try:
        payload = task_type.payload.model_validate(body.payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in exc.errors()
        )
        raise BadRequestError(f"invalid {body.type} payload: {problems}") from None
    creates_sandbox = isinstance(payload, VmCreatePayload)
    await enforce_quota(ctx, caller.tenant_id, {"tasks": 1, "sandboxes": int(creates_sandbox)})

    node: str | None = None
    driver: str | None = None
    if isinstance(payload, VmCreatePayload):
        if payload.sandbox_id is None:
            # a repeated submission (same Idempotency-Key) names the same sandbox
            seed = f"{caller.tenant_id}/{body.idempotency_key}" if body.idempotency_key else None
            suffix = hashlib.sha256(seed.encode()).hexdigest() if seed else uuid.uuid4().hex
            payload = payload.model_copy(update={"sandbox_id": f"vm-{suffix[:12]}"})
        driver = payload.driver
        await ctx.records.create_sandbox(
            caller.tenant_id,
            str(payload.sandbox_id),
            name=payload.name,
            driver=payload.driver,
            vcpus=payload.vcpus,
            memory_mb=payload.memory_mb,
            network=payload.network,
        )
    elif isinstance(payload, JobRunPayload):
        payload = await _resolve_job(ctx, caller, payload)
    elif task_type.pinned:
        sandbox_id = str(getattr(payload, "sandbox_id", None))
        sandbox = await ctx.records.get_sandbox(sandbox_id, caller.tenant_id)
        if sandbox.status == "deleted":
            raise ConflictError(f"sandbox {sandbox_id} was deleted")
        if sandbox.node is None:
            raise ConflictError(
                f"sandbox {sandbox_id} is still being created (status {sandbox.status}); "
                "wait for its vm:create task, e.g. `aether task wait ID`"
            )
        node = sandbox.node
    if body.run_at is not None:
        run_at = (
            body.run_at.astimezone(UTC).replace(tzinfo=None) if body.run_at.tzinfo else body.run_at
        )
    else:
        run_at = now() + timedelta(seconds=body.delay or 0)
    return await ctx.queue.submit(
        caller.tenant_id,
        NewTask(
            type=task_type.name,
            payload=payload.model_dump(mode="json"),
            queue=body.queue or task_type.queue,
            priority=body.priority if body.priority is not None else task_type.priority,
            max_retry=body.max_retry if body.max_retry is not None else task_type.max_retry,
            timeout=body.timeout or task_type.timeout,
            run_at=run_at.replace(tzinfo=UTC).timestamp(),
            idempotency_key=body.idempotency_key,
            node=node,
            driver=driver,
        ),
    )


async def _resolve_job(
    ctx: ServerContext, caller: Principal, payload: JobRunPayload
) -> JobRunPayload:
    """Pin the job to an artifact (the live version by default) and give it a sandbox."""
    app = await ctx.records.get_app(caller.tenant_id, payload.app)
    if payload.version is not None:
        deployment = await ctx.records.get_deployment_by_version(
            caller.tenant_id, app, payload.version
        )
    else:
        deployments = await ctx.records.list_deployments(caller.tenant_id, app)
        live = [d for d in deployments if d.status in ("active", "pending")]
        if not live:
            raise ConflictError(f"app {payload.app!r} has no live deployment to run a job from")
        deployment = live[0]
    sandbox_id = payload.sandbox_id or f"job-{uuid.uuid4().hex[:12]}"
    await ctx.records.create_sandbox(
        caller.tenant_id,
        sandbox_id,
        name=f"job {payload.app} v{deployment.version}",
        driver=None,
        vcpus=1,
        memory_mb=payload.memory_mb,
        network=payload.network,
    )
    env = {**deployment.spec.get("env", {}), **payload.env}
    return payload.model_copy(
        update={
            "digest": deployment.digest,
            "version": deployment.version,
            "sandbox_id": sandbox_id,
            "env": env,
        }
    )


def _result_of(task: TaskOut, result: dict[str, Any]) -> BaseModel | None:
    """The node's result, checked against the task type's result model and the task's own
    sandbox: 400 (nothing recorded) when it does not fit. None: a type without a model."""
    task_type = lookup(task.type)
    if task_type is None or task_type.result is None:
        return None
    try:
        parsed = task_type.result.model_validate(result)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'result'}: {e['msg']}" for e in exc.errors()
        )
        raise BadRequestError(f"invalid {task.type} result: {problems}") from None
    expected = task.payload.get("sandbox_id") or task.payload.get("vm_id")  # job:run, vm:*
    named = getattr(parsed, "sandbox_id", None)
    if expected is not None and named != expected:
        raise BadRequestError(
            f"the result names sandbox {named!r}, but task {task.id} is about {expected!r}"
        )
    return parsed


async def record_outcome(
    ctx: ServerContext, task: TaskOut, node: str, result: dict[str, Any]
) -> None:
    """What a finished task changed: sandboxes and executions (BadRequestError, nothing
    changed, for a result that does not fit its type)."""
    parsed = _result_of(task, result)
    if isinstance(parsed, VmCreateResult):
        await ctx.records.update_sandbox(
            parsed.sandbox_id,
            node=node,
            driver=parsed.driver,
            isolated=parsed.isolated,
            status="running",
        )
        await ctx.store.put(
            f"sandboxes/{node}/{parsed.sandbox_id}",
            json.dumps({"id": parsed.sandbox_id, "status": "running"}).encode(),
        )
    elif isinstance(parsed, VmDeleteResult):
        await ctx.records.update_sandbox(parsed.sandbox_id, status="deleted")
        await ctx.store.delete(f"sandboxes/{node}/{parsed.sandbox_id}")
    if isinstance(parsed, JobRunResult):
        await ctx.records.update_sandbox(
            parsed.sandbox_id, node=node, status="deleted", driver=parsed.driver
        )
    if isinstance(parsed, ExecutionResult):
        sandbox_id = parsed.sandbox_id
        tenant = (await ctx.records.get_sandbox(sandbox_id)).tenant_id
        await ctx.records.add_execution(
            Execution(
                id=f"ex-{task.id}",  # one execution per task, however often it was retried
                tenant_id=tenant,
                sandbox_id=sandbox_id,
                task_id=task.id,
                command=parsed.command,
                args=parsed.args,
                exit_code=parsed.exit_code,
                stdout=parsed.stdout,
                stderr=parsed.stderr,
                stdout_truncated=parsed.stdout_truncated,
                stderr_truncated=parsed.stderr_truncated,
                started_at=utc(parsed.started_at),
                finished_at=utc(parsed.finished_at),
            )
        )

"""Submitting tasks and recording their outcomes: the rules around the queue.

The queue (``aether.tasks.queue``) orders and leases work; this module decides
what a task is before it is queued (type, defaults, payload, placement) and
what its result means afterwards (a sandbox created or deleted, an execution
recorded).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from aether import tracing
from aether.errors import BadRequestError, ConflictError
from aether.model.tasks import SandboxRecord, SandboxStatus, TaskIn, TaskOut
from aether.server.context import ServerContext
from aether.server.services.quotas import enforce_quota
from aether.server.signals import Signals
from aether.store.records import Principal
from aether.store.records.repo import now, utc
from aether.store.records.schema import Deployment, Execution
from aether.tasks.queue.base import NewTask
from aether.tasks.types import (
    ExecutionResult,
    JobRunPayload,
    JobRunResult,
    TaskType,
    VmCreatePayload,
    VmCreateResult,
    VmDeleteResult,
    lookup,
    registered,
)

__all__ = ["record_outcome", "record_outcomes", "submit_task", "submit_tasks"]

#: wakes this server's ``GET /tasks/{id}?wait=`` long polls when a task settles here
signals = Signals()


def _parse(body: TaskIn) -> tuple[TaskType, BaseModel]:
    """The task's type and validated payload (BadRequestError: nothing stored)."""
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
        return task_type, task_type.payload.model_validate(body.payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in exc.errors()
        )
        raise BadRequestError(f"invalid {body.type} payload: {problems}") from None


async def submit_task(ctx: ServerContext, caller: Principal, body: TaskIn) -> TaskOut:
    return (await submit_tasks(ctx, caller, [body]))[0]


async def submit_tasks(
    ctx: ServerContext, caller: Principal, bodies: Sequence[TaskIn]
) -> list[TaskOut]:
    """Check every task, then queue them all in one transaction (all or none).

    A batch is checked whole before anything is stored: a bad task (its index
    named when there are several) fails the batch with nothing queued, and the
    tenant's quota is checked once for the whole batch.
    """
    parsed: list[tuple[TaskType, BaseModel]] = []
    for i, body in enumerate(bodies):
        try:
            parsed.append(_parse(body))
        except BadRequestError as exc:
            if len(bodies) == 1:
                raise
            raise BadRequestError(f"tasks[{i}]: {exc.message}", code=exc.code) from None
    creates = sum(isinstance(payload, VmCreatePayload) for _, payload in parsed)
    await enforce_quota(ctx, caller.tenant_id, {"tasks": len(bodies), "sandboxes": creates})
    # everything that can refuse a task is read first, so a refusal leaves nothing behind
    sandboxes: dict[str, str] = {}  # pinned sandbox -> its node, each read once
    jobs: dict[int, Deployment] = {}
    for i, (task_type, payload) in enumerate(parsed):
        if isinstance(payload, JobRunPayload):
            jobs[i] = await _job_deployment(ctx, caller, payload)
        elif task_type.pinned and not isinstance(payload, VmCreatePayload):
            sandbox_id = str(getattr(payload, "sandbox_id", None))
            if sandbox_id not in sandboxes:
                sandboxes[sandbox_id] = await _sandbox_node(ctx, caller, sandbox_id)
    specs = [
        await _spec(ctx, caller, body, task_type, payload, sandboxes, jobs.get(i))
        for i, (body, (task_type, payload)) in enumerate(zip(bodies, parsed, strict=True))
    ]
    return await ctx.queue.submit_many(caller.tenant_id, specs)


async def _sandbox_node(ctx: ServerContext, caller: Principal, sandbox_id: str) -> str:
    """The node of a sandbox a task is pinned to (404 another tenant's, 409 not ready)."""
    sandbox = await ctx.records.get_sandbox(sandbox_id, caller.tenant_id)
    if sandbox.status == "deleted":
        raise ConflictError(f"sandbox {sandbox_id} was deleted")
    if sandbox.node is None:
        raise ConflictError(
            f"sandbox {sandbox_id} is still being created (status {sandbox.status}); "
            "wait for its vm:create task, e.g. `aether task wait ID`"
        )
    return sandbox.node


async def _spec(
    ctx: ServerContext,
    caller: Principal,
    body: TaskIn,
    task_type: TaskType,
    payload: BaseModel,
    sandboxes: dict[str, str],
    job: Deployment | None,
) -> NewTask:
    """The task to queue: defaults resolved, pinned to its sandbox's node, the sandbox a
    ``vm:create`` or ``job:run`` makes recorded."""
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
    elif isinstance(payload, JobRunPayload) and job is not None:
        payload = await _job_sandbox(ctx, caller, payload, job)
    elif task_type.pinned:
        node = sandboxes[str(getattr(payload, "sandbox_id", None))]
    if body.run_at is not None:
        run_at = (
            body.run_at.astimezone(UTC).replace(tzinfo=None) if body.run_at.tzinfo else body.run_at
        )
    else:
        run_at = now() + timedelta(seconds=body.delay or 0)
    return NewTask(
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
        traceparent=tracing.traceparent(),
    )


async def _job_deployment(
    ctx: ServerContext, caller: Principal, payload: JobRunPayload
) -> Deployment:
    """The deployment a job runs (the live version by default)."""
    app = await ctx.records.get_app(caller.tenant_id, payload.app)
    if payload.version is not None:
        return await ctx.records.get_deployment_by_version(caller.tenant_id, app, payload.version)
    deployments = await ctx.records.list_deployments(caller.tenant_id, app)
    live = [d for d in deployments if d.status in ("active", "pending")]
    if not live:
        raise ConflictError(f"app {payload.app!r} has no live deployment to run a job from")
    return live[0]


async def _job_sandbox(
    ctx: ServerContext, caller: Principal, payload: JobRunPayload, deployment: Deployment
) -> JobRunPayload:
    """Pin the job to its deployment's artifact and give it a sandbox."""
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
    (problem,) = await record_outcomes(ctx, node, [(task, result)])
    if problem is not None:
        raise problem


async def record_outcomes(
    ctx: ServerContext, node: str, finished: Sequence[tuple[TaskOut, dict[str, Any]]]
) -> list[BadRequestError | None]:
    """``record_outcome`` for many tasks: for each, None (recorded) or the 400 for a
    result that does not fit (nothing of it recorded). The executions are written in
    one transaction."""
    problems: list[BadRequestError | None] = []
    executions: list[tuple[TaskOut, ExecutionResult]] = []
    for task, result in finished:
        try:
            parsed = _result_of(task, result)
        except BadRequestError as exc:
            problems.append(exc)
            continue
        problems.append(None)
        await _sandbox_changed(ctx, node, parsed)
        if isinstance(parsed, ExecutionResult):
            executions.append((task, parsed))
    if executions:
        tenants = await ctx.records.sandbox_tenants({p.sandbox_id for _, p in executions})
        await ctx.records.add_executions(
            [
                Execution(
                    id=f"ex-{task.id}",  # one execution per task, however often it was retried
                    tenant_id=tenants[parsed.sandbox_id],
                    sandbox_id=parsed.sandbox_id,
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
                for task, parsed in executions
                if parsed.sandbox_id in tenants
            ]
        )
    return problems


async def _sandbox_changed(ctx: ServerContext, node: str, parsed: BaseModel | None) -> None:
    """A sandbox made, deleted, or used up by a job: its record and its state-store key."""
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
            SandboxRecord(id=parsed.sandbox_id, status=SandboxStatus.RUNNING)
            .model_dump_json()
            .encode(),
        )
    elif isinstance(parsed, VmDeleteResult):
        await ctx.records.update_sandbox(parsed.sandbox_id, status="deleted")
        await ctx.store.delete(f"sandboxes/{node}/{parsed.sandbox_id}")
    if isinstance(parsed, JobRunResult):
        await ctx.records.update_sandbox(
            parsed.sandbox_id, node=node, status="deleted", driver=parsed.driver
        )

"""The node's task worker: claim, run in a sandbox, heartbeat, report.

At-least-once: a claim is a lease the worker keeps alive with heartbeats; if
the node dies the lease runs out on the server and the task is claimed again
(by this node once it is back, for a task pinned to one of its sandboxes).
A heartbeat answered "no" means the task was cancelled: the run is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aether.client import ApiClient
from aether.errors import AetherError, BadRequestError, ConflictError, ForbiddenError
from aether.model.tasks import TaskOut
from aether.tasks.handlers import PermanentTaskError, TaskContext, handler_for
from aether.tasks.types import lookup

__all__ = ["LIGHT_TYPES", "TaskWorker"]

#: tasks that mostly wait on the network (an agent's run: the server does the model
#: calls, the sandbox tools are tasks of their own): they do not hold a sandbox slot
LIGHT_TYPES = frozenset({"agent:run"})

log = logging.getLogger("aether.node.tasks")


class TaskWorker:
    def __init__(
        self,
        client: ApiClient,
        node_id: str,
        root: Path,
        sandboxes: dict[str, Any],
        *,
        concurrency: int = 8,
        light_concurrency: int = 256,
        queues: tuple[str, ...] = ("default",),
        heartbeat_every: float = 1.0,
    ) -> None:
        self.client = client
        self.node_id = node_id
        self.root = root
        self.sandboxes = sandboxes
        self.concurrency = concurrency
        self.light_concurrency = light_concurrency
        self.queues = list(queues)
        self.heartbeat_every = heartbeat_every
        self.running: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        if not self.sandboxes:
            log.warning("no sandbox driver available: this node runs no tasks")
            return
        self.root.mkdir(parents=True, exist_ok=True)
        slots = asyncio.Semaphore(self.concurrency)
        light = asyncio.Semaphore(self.light_concurrency)
        while True:
            await slots.acquire()
            try:
                task = await self.client.claim_task(
                    self.node_id, list(self.sandboxes), self.queues, wait=10.0
                )
            except AetherError as exc:
                slots.release()
                log.debug("claim failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if task is None:
                slots.release()
                continue
            held = slots
            if task.type in LIGHT_TYPES:  # trade the sandbox slot for a light one
                slots.release()
                await light.acquire()
                held = light
            job = asyncio.create_task(self._run(task), name=f"task {task.id}")
            self.running[task.id] = job

            def done(
                _: asyncio.Task[None], task_id: str = task.id, held: asyncio.Semaphore = held
            ) -> None:
                held.release()
                self.running.pop(task_id, None)

            job.add_done_callback(done)

    async def _run(self, task: TaskOut) -> None:
        work = asyncio.create_task(self._execute(task))
        beat = asyncio.create_task(self._heartbeat(task, work))
        try:
            outcome = await work
        except asyncio.CancelledError:
            log.info("task %s stopped (cancelled or claim lost)", task.id)
            return
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        await self._report(task, outcome)

    async def _heartbeat(self, task: TaskOut, work: asyncio.Task[Any]) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_every)
            try:
                if not await self.client.task_heartbeat(
                    task.id, self.node_id, attempt=task.attempts
                ):
                    work.cancel()  # cancelled, or the claim went to someone else
                    return
            except ForbiddenError:
                work.cancel()  # this attempt's claim is no longer this node's
                return
            except AetherError as exc:
                log.debug("heartbeat for %s failed (%s)", task.id, exc)

    async def _execute(self, task: TaskOut) -> tuple[str, Any]:
        task_type = lookup(task.type)
        handle = handler_for(task.type)
        if task_type is None or handle is None:
            return "permanent", f"this node cannot run task type {task.type!r}"
        try:
            payload = task_type.payload.model_validate(task.payload)
        except ValidationError as exc:
            return "permanent", f"invalid payload: {exc}"
        ctx = TaskContext(
            node=self.node_id,
            sandboxes=self.sandboxes,
            root=self.root,
            client=self.client,
            timeout=task.timeout,
            task_id=task.id,
        )
        try:
            async with asyncio.timeout(task.timeout + 5):  # the handler enforces task.timeout
                return "ok", await handle(payload, ctx)
        except TimeoutError:
            return "retry", f"timed out after {task.timeout:g}s"
        except PermanentTaskError as exc:
            return "permanent", str(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("task %s attempt failed: %s", task.id, exc, exc_info=True)
            return "retry", f"{type(exc).__name__}: {exc}"

    async def _report(self, task: TaskOut, outcome: tuple[str, Any]) -> None:
        kind, value = outcome
        for attempt in range(20):  # the server may be restarting: keep the result
            try:
                if kind == "ok":
                    await self.client.complete_task(
                        task.id, self.node_id, value, attempt=task.attempts
                    )
                else:
                    await self.client.fail_task(
                        task.id,
                        self.node_id,
                        str(value),
                        retryable=kind == "retry",
                        attempt=task.attempts,
                    )
                return
            except BadRequestError as exc:
                log.error("task %s: the server refused its outcome (%s)", task.id, exc)
                if kind != "ok":
                    return  # the lease will expire and the task be retried
                kind, value = "permanent", f"the server refused the result: {exc}"
            except (ConflictError, ForbiddenError) as exc:  # no longer this attempt's claim
                log.info("task %s: result not taken (%s)", task.id, exc)
                return
            except AetherError as exc:
                log.debug("reporting task %s failed (%s); retrying", task.id, exc)
                await asyncio.sleep(min(0.2 * 2**attempt, 5))
        log.error("task %s: could not report its result; the lease will expire", task.id)

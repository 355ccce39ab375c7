"""The node's task worker: claim, run in a sandbox, heartbeat, report.

At-least-once: a claim is a lease the worker keeps alive with heartbeats; if
the node dies the lease runs out on the server and the task is claimed again
(by this node once it is back, for a task pinned to one of its sandboxes).
A heartbeat answered "no" means the task was cancelled: the run is stopped.

Batches (``POST /tasks/exchange``): the worker claims as many tasks as it has
room for in one request, and hands in finished attempts together with a claim
for the room they freed. Room is ``concurrency`` sandbox slots plus ``prefetch``
tasks held ready (default: as many again), as Celery's prefetch does: a slot
that frees starts its next task at once instead of waiting a round trip for
it. A prefetched task heartbeats from the moment it is claimed, so its lease
holds while it waits for a slot. Two loops share the slots: the *poller* long-polls
with every free slot when nothing is waiting to be reported; the *reporter*
sends whatever finished while the previous request was on its way, at once,
with the slots free at that moment. A report is kept (and sent again) until the
server has answered it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aether import tracing
from aether.client import ApiClient
from aether.errors import AetherError, ForbiddenError
from aether.model.tasks import TaskOut
from aether.tasks.handlers import PermanentTaskError, TaskContext, handler_for
from aether.tasks.types import lookup

__all__ = ["LIGHT_TYPES", "REPORT_TRIES", "TaskWorker"]

#: tasks that mostly wait on the network (an agent's run: the server does the model
#: calls, the sandbox tools are tasks of their own): they do not hold a sandbox slot
LIGHT_TYPES = frozenset({"agent:run"})
#: how many times a report is sent before the worker gives up on it (its lease expires)
REPORT_TRIES = 20

log = logging.getLogger("aether.node.tasks")


@dataclass
class _Report:
    body: dict[str, Any]
    tries: int = 0


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
        poll_wait: float = 10.0,
        prefetch: int | None = None,
    ) -> None:
        self.client = client
        self.node_id = node_id
        self.root = root
        self.sandboxes = sandboxes
        self.concurrency = concurrency
        self.light_concurrency = light_concurrency
        self.queues = list(queues)
        self.heartbeat_every = heartbeat_every
        self.poll_wait = poll_wait
        self.prefetch = concurrency if prefetch is None else prefetch
        self.running: dict[str, asyncio.Task[None]] = {}
        # tasks this worker may still take: neither held (running or waiting to) nor asked for
        self._free = concurrency + self.prefetch
        self._reports: list[_Report] = []
        self._changed = asyncio.Condition()
        self._slots = asyncio.Semaphore(concurrency)  # sandbox slots: tasks running at once
        self._light = asyncio.Semaphore(light_concurrency)

    async def run(self) -> None:
        if not self.sandboxes:
            log.warning("no sandbox driver available: this node runs no tasks")
            return
        self.root.mkdir(parents=True, exist_ok=True)
        async with asyncio.TaskGroup() as loops:
            loops.create_task(self._poll())
            loops.create_task(self._hand_in())

    async def _poll(self) -> None:
        """Long-poll with every free slot while nothing waits to be reported."""
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: self._free > 0 and not self._reports)
            await self._exchange([], wait=self.poll_wait)

    async def _hand_in(self) -> None:
        """Send finished attempts as soon as there are any, claiming the freed slots."""
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._reports))
                reports, self._reports = self._reports, []
            await self._exchange(reports, wait=0.0)

    async def _exchange(self, reports: list[_Report], *, wait: float) -> None:
        want, self._free = self._free, 0
        try:
            answers, tasks = await self.client.exchange_tasks(
                self.node_id,
                list(self.sandboxes),
                self.queues,
                reports=[r.body for r in reports],
                want=want,
                wait=wait,
            )
        except AetherError as exc:
            log.debug("exchanging tasks failed (%s); retrying", exc)
            await self._give_back(want, self._retry(reports))
            tries = max((r.tries for r in reports), default=0)
            await asyncio.sleep(min(0.2 * 2**tries, 5.0) if reports else 1.0)
            return
        again = [
            resend
            for report, answer in zip(reports, answers, strict=True)
            if (resend := self._answered(report, answer)) is not None
        ]
        free = want - len(tasks)
        for task in tasks:
            if task.type in LIGHT_TYPES:
                free += 1  # a light task does not hold a sandbox slot
            self._start(task)
        await self._give_back(free, again)

    async def _give_back(self, slots: int, reports: list[_Report]) -> None:
        async with self._changed:
            self._free += slots
            self._reports[:0] = reports
            self._changed.notify_all()

    def _retry(self, reports: list[_Report]) -> list[_Report]:
        kept = []
        for report in reports:
            report.tries += 1
            if report.tries < REPORT_TRIES:
                kept.append(report)
            else:
                log.error(
                    "task %s: could not report its result; the lease will expire",
                    report.body["id"],
                )
        return kept

    @staticmethod
    def _answered(report: _Report, answer: dict[str, Any]) -> _Report | None:
        """What to send again for a report the server answered (None: nothing)."""
        task_id, code = report.body["id"], answer.get("code")
        if code is None:
            return None
        if code == "bad_request" and "result" in report.body:
            log.error("task %s: the server refused its result (%s)", task_id, answer["message"])
            return _Report(
                {
                    "id": task_id,
                    "attempt": report.body["attempt"],
                    "error": f"the server refused the result: {answer['message']}",
                    "retryable": False,
                }
            )
        if code == "bad_request":
            log.error("task %s: the server refused its outcome (%s)", task_id, answer["message"])
        else:  # conflict, forbidden, not found: no longer this attempt's claim
            log.info("task %s: result not taken (%s)", task_id, answer["message"])
        return None

    def _start(self, task: TaskOut) -> None:
        job = asyncio.create_task(self._run(task), name=f"task {task.id}")
        self.running[task.id] = job
        job.add_done_callback(lambda _: self.running.pop(task.id, None))

    async def _run(self, task: TaskOut) -> None:
        light = task.type in LIGHT_TYPES
        outcome = await self._attempt(task, self._light if light else self._slots)
        async with self._changed:
            if not light:
                self._free += 1
            if outcome is not None:
                self._reports.append(_Report(_report_body(task, outcome)))
            self._changed.notify_all()

    async def _attempt(self, task: TaskOut, gate: asyncio.Semaphore) -> tuple[str, Any] | None:
        """Run the task once ``gate`` has a slot, with its heartbeats from the start (a
        prefetched task waiting for a slot keeps its lease): the outcome, or None once
        the claim is gone."""

        async def gated() -> tuple[str, Any]:
            async with gate:
                return await self._execute(task)

        work = asyncio.create_task(gated())
        beat = asyncio.create_task(self._heartbeat(task, work))
        try:
            outcome = await work
        except asyncio.CancelledError:
            log.info("task %s stopped (cancelled or claim lost)", task.id)
            return None
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        return outcome

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

    async def _with_secrets(self, task: TaskOut, payload: Any) -> Any:
        """The payload with the values of its ``secrets`` in its ``env``, fetched from the
        server for this attempt (held in memory only: never logged or reported)."""
        refs = getattr(payload, "secrets", None)
        if not refs:
            return payload
        answer = await self.client.json(
            "GET",
            f"/api/v1/tasks/{task.id}/secrets",
            params={"node": self.node_id, "attempt": task.attempts},
        )
        return payload.model_copy(update={"env": {**payload.env, **answer["env"]}})

    async def _execute(self, task: TaskOut) -> tuple[str, Any]:
        with tracing.span(
            f"task: {task.type}",
            parent=task.traceparent,
            attributes={"aether.task": task.id, "aether.attempt": task.attempts},
        ):
            return await self._execute_traced(task)

    async def _execute_traced(self, task: TaskOut) -> tuple[str, Any]:
        task_type = lookup(task.type)
        handle = handler_for(task.type)
        if task_type is None or handle is None:
            return "permanent", f"this node cannot run task type {task.type!r}"
        try:
            payload = task_type.payload.model_validate(task.payload)
        except ValidationError as exc:
            return "permanent", f"invalid payload: {exc}"
        try:
            payload = await self._with_secrets(task, payload)
        except AetherError as exc:  # "secret X is not set"
            return "permanent", str(exc)
        parent = tracing.traceparent()
        if parent is not None and isinstance(getattr(payload, "env", None), dict):
            # the sandboxed command may continue the trace (W3C's variable for it)
            env = {**payload.env, tracing.TRACEPARENT_ENV: parent}
            payload = payload.model_copy(update={"env": env})
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


def _report_body(task: TaskOut, outcome: tuple[str, Any]) -> dict[str, Any]:
    """The report of one finished attempt, as ``POST /tasks/exchange`` takes it."""
    kind, value = outcome
    if kind == "ok":
        return {"id": task.id, "attempt": task.attempts, "result": value}
    return {
        "id": task.id,
        "attempt": task.attempts,
        "error": str(value),
        "retryable": kind == "retry",
    }

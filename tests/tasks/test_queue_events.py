"""The task queue's event log (``events_after``, ``events_head``, ``trim_events``),
run against every backend like the rest of the contract."""

from __future__ import annotations

from typing import Any

from aether.model.tasks import TaskEvent, TaskState
from aether.tasks.queue.base import EVENT_ERROR_CHARS, LEASE_EXPIRED, TaskQueue
from tests.tasks.test_queue_contract import ACME, GLOBEX, T0, claim, must_claim, task

S = TaskState


def steps(events: list[TaskEvent]) -> list[tuple[Any, ...]]:
    """What a console shows of each change: task, from, to, attempt, node."""
    return [(e.task_id, e.previous, e.state, e.attempt, e.node) for e in events]


async def everything(queue: TaskQueue, after: int = 0) -> list[TaskEvent]:
    return await queue.events_after(after, 1000)


async def test_a_task_s_life_is_logged_change_by_change(queue: TaskQueue) -> None:
    assert await queue.events_head() == 0 and await everything(queue) == []
    made = await queue.submit(ACME, task(queue="fast", priority=7, max_retry=1), now=T0)
    await must_claim(queue, "n1", queues=("fast",), lease=10, now=T0 + 1)
    assert await queue.heartbeat(made.id, "n1", 10, now=T0 + 2)  # not a change
    await queue.fail(made.id, "n1", "boom", now=T0 + 3)
    await must_claim(queue, "n2", node="n2", queues=("fast",), now=T0 + 1000)
    await queue.complete(made.id, "n2", {"ok": True}, now=T0 + 1001)

    events = await everything(queue)
    assert steps(events) == [
        (made.id, None, S.PENDING, 0, None),
        (made.id, S.PENDING, S.ACTIVE, 1, "n1"),
        (made.id, S.ACTIVE, S.RETRY, 1, "n1"),
        (made.id, S.RETRY, S.ACTIVE, 2, "n2"),
        (made.id, S.ACTIVE, S.SUCCEEDED, 2, "n2"),
    ]
    assert [e.ts for e in events] == [T0, T0 + 1, T0 + 3, T0 + 1000, T0 + 1001]
    assert [e.error for e in events] == [None, None, "boom", None, None]
    assert {(e.tenant_id, e.task_type, e.queue, e.priority) for e in events} == {
        (ACME, "job:run", "fast", 7)
    }
    positions = [e.position for e in events]
    assert positions == sorted(set(positions)) and positions[0] > 0
    assert await queue.events_head() == positions[-1]


async def test_failures_cancellations_and_expiries_are_logged(queue: TaskQueue) -> None:
    later = await queue.submit(ACME, task(run_at=T0 + 60), now=T0)
    pending = await queue.submit(GLOBEX, task(priority=1), now=T0)
    start = await queue.events_head()
    await queue.cancel(pending.id, GLOBEX, now=T0 + 1)
    await queue.cancel(pending.id, GLOBEX, now=T0 + 2)  # already cancelled: no change
    claimed = await must_claim(queue, "n1", lease=10, now=T0 + 60)
    assert claimed.id == later.id
    await queue.expire(now=T0 + 70)
    await must_claim(queue, "n1", now=T0 + 71)
    await queue.fail(later.id, "n1", "bad input", retryable=False, now=T0 + 72)

    other = await queue.submit(ACME, task(max_retry=0), now=T0 + 80)
    again = await queue.submit(ACME, task(idempotency_key="k"), now=T0 + 80)
    await queue.submit(ACME, task(idempotency_key="k"), now=T0 + 81)  # the same task
    assert (await must_claim(queue, "n1", lease=5, now=T0 + 82)).id == other.id
    await queue.expire(now=T0 + 90)  # attempts used up: dead
    assert (await must_claim(queue, "n3", node="n3", now=T0 + 91)).id == again.id
    await queue.cancel(again.id, ACME, now=T0 + 92)

    events = await everything(queue, start)
    assert steps(events) == [
        (pending.id, S.PENDING, S.CANCELLED, 0, None),
        (later.id, S.SCHEDULED, S.ACTIVE, 1, "n1"),
        (later.id, S.ACTIVE, S.RETRY, 1, "n1"),
        (later.id, S.RETRY, S.ACTIVE, 2, "n1"),
        (later.id, S.ACTIVE, S.FAILED, 2, "n1"),
        (other.id, None, S.PENDING, 0, None),
        (again.id, None, S.PENDING, 0, None),
        (other.id, S.PENDING, S.ACTIVE, 1, "n1"),
        (other.id, S.ACTIVE, S.DEAD, 1, "n1"),
        (again.id, S.PENDING, S.ACTIVE, 1, "n3"),
        (again.id, S.ACTIVE, S.CANCELLED, 1, "n3"),
    ]
    errors = {(e.task_id, e.state): e.error for e in events if e.error is not None}
    assert errors == {
        (later.id, S.RETRY): LEASE_EXPIRED,
        (later.id, S.FAILED): "bad input",
        (other.id, S.DEAD): LEASE_EXPIRED,
    }
    assert events[0].tenant_id == GLOBEX


async def test_a_long_error_is_shortened(queue: TaskQueue) -> None:
    made = await queue.submit(ACME, task(), now=T0)
    await must_claim(queue, now=T0)
    error = "é" * 400  # two bytes each: a cut by bytes must not split one
    await queue.fail(made.id, "w1", error, now=T0 + 1)
    (failed,) = [e for e in await everything(queue) if e.state == S.RETRY]
    assert failed.error is not None
    assert 0 < len(failed.error) <= EVENT_ERROR_CHARS and error.startswith(failed.error)
    assert (await queue.get(made.id)).error == error  # the task keeps all of it


async def test_reading_after_a_position_pages_and_trimming_keeps_the_newest(
    queue: TaskQueue,
) -> None:
    for n in range(6):
        await queue.submit(ACME, task(priority=n), now=T0 + n)
    events = await everything(queue)
    positions = [e.position for e in events]
    assert [e.priority for e in events] == list(range(6))
    first = await queue.events_after(0, 2)
    rest = await queue.events_after(first[-1].position, 10)
    assert first + rest == events
    assert await queue.events_after(positions[-1], 10) == []

    assert await queue.trim_events(keep=100) == 0
    removed = await queue.trim_events(keep=positions[-1] - positions[2])
    assert removed == 3
    assert await everything(queue) == events[3:]
    assert await queue.events_head() == positions[-1]
    await queue.submit(ACME, task(), now=T0 + 10)
    (newest,) = await queue.events_after(positions[-1], 10)
    assert newest.position > positions[-1]  # a position is never given twice


async def test_nothing_claimable_logs_nothing(queue: TaskQueue) -> None:
    await queue.submit(ACME, task(queue="elsewhere"), now=T0)
    head = await queue.events_head()
    assert await claim(queue, now=T0) is None
    assert await queue.expire(now=T0 + 1000) == 0
    assert await queue.events_head() == head


async def test_history_is_one_task_s_changes_in_order(queue: TaskQueue) -> None:
    mine = await queue.submit(ACME, task(), now=T0)
    other = await queue.submit(GLOBEX, task(), now=T0)
    claimed = await must_claim(queue, "w1")
    assert claimed.id == mine.id
    await queue.fail(mine.id, "w1", "exit 3", now=T0 + 5)
    await queue.cancel(other.id, GLOBEX, now=T0 + 6)
    history = await queue.history(mine.id)
    assert [(c.previous, c.state) for c in history] == [
        (None, TaskState.PENDING),
        (TaskState.PENDING, TaskState.ACTIVE),
        (TaskState.ACTIVE, TaskState.RETRY),
    ]
    assert history[-1].error == "exit 3" and history[1].node == "w1"
    assert [c.task_id for c in await queue.history(other.id)] == [other.id, other.id]
    assert await queue.history("no-such-task") == []


async def test_history_leaves_out_what_the_trim_dropped(queue: TaskQueue) -> None:
    made = await queue.submit(ACME, task(), now=T0)
    await must_claim(queue, "w1")
    await queue.complete(made.id, "w1", {}, now=T0 + 1)
    assert len(await queue.history(made.id)) == 3
    assert await queue.trim_events(1) == 2
    assert [(c.previous, c.state) for c in await queue.history(made.id)] == [
        (TaskState.ACTIVE, TaskState.SUCCEEDED)
    ]

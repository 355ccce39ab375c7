"""The TaskQueue contract (see aether.tasks.queue.base), run against every backend.

Time is passed explicitly (``now=T0 + ...``), so leases, delays and backoffs are
tested without sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aether.errors import BadRequestError, ConflictError, NotFoundError
from aether.model.tasks import TaskOut, TaskState
from aether.tasks.queue.base import (
    LEASE_EXPIRED,
    Backoff,
    Completion,
    NewTask,
    TaskQueue,
    backoff_ceiling,
    backoff_delay,
    utc,
)
from tests.tasks.conftest import RecordingBackoff

T0 = 1_700_000_000.0
ACME, GLOBEX = "acme", "globex"
DRIVERS = ("bwrap", "process")


def task(**fields: Any) -> NewTask:
    fields.setdefault("type", "job:run")
    return NewTask(**fields)


async def claim(
    queue: TaskQueue,
    worker: str = "w1",
    *,
    node: str = "n1",
    drivers: tuple[str, ...] = DRIVERS,
    queues: tuple[str, ...] = ("default",),
    lease: float = 30.0,
    now: float = T0,
) -> TaskOut | None:
    return await queue.claim(
        worker, node=node, drivers=drivers, queues=queues, lease=lease, now=now
    )


async def must_claim(queue: TaskQueue, worker: str = "w1", **kwargs: Any) -> TaskOut:
    claimed = await claim(queue, worker, **kwargs)
    assert claimed is not None, "expected a task to claim"
    return claimed


async def drain(queue: TaskQueue, **kwargs: Any) -> list[str]:
    """Claim until nothing is left; the ids in claim order."""
    ids = []
    while (claimed := await claim(queue, **kwargs)) is not None:
        ids.append(claimed.id)
    return ids


# -- submit and get --------------------------------------------------------------


async def test_submit_stores_the_spec_as_a_pending_task(queue: TaskQueue) -> None:
    spec = task(
        type="vm:execute",
        payload={"vm_id": "v1", "command": "echo", "args": ["hi"]},
        queue="fast",
        priority=7,
        max_retry=2,
        timeout=600,
        node="n1",
    )
    made = await queue.submit(ACME, spec, now=T0)
    assert made.state == TaskState.PENDING
    assert (made.type, made.payload, made.queue, made.priority) == (
        "vm:execute",
        {"vm_id": "v1", "command": "echo", "args": ["hi"]},
        "fast",
        7,
    )
    assert (made.max_retry, made.timeout, made.node, made.attempts) == (2, 600.0, "n1", 0)
    assert made.run_at == made.created_at == made.updated_at == utc(T0)
    unset = (made.result, made.error, made.claimed_by, made.started_at, made.finished_at)
    assert unset == (None,) * 5 and made.idempotency_key is None
    assert await queue.get(made.id, ACME) == made
    assert await queue.get(made.id) == made  # nodes read without a tenant


async def test_a_task_keeps_the_trace_it_was_submitted_in(queue: TaskQueue) -> None:
    """Its claim and run on a node join the submitting request's trace (issue 21)."""
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    traced, *batch = await queue.submit_many(
        ACME, [task(traceparent=parent), task(), task(traceparent=parent)], now=T0
    )
    assert traced.traceparent == parent and [t.traceparent for t in batch] == [None, parent]
    assert (await queue.get(traced.id, ACME)) == traced
    claimed = await queue.claim_many(
        "w", node="n1", drivers=[], queues=["default"], lease=30, limit=3, now=T0
    )
    assert [t.traceparent for t in claimed] == [parent, None, parent]


async def test_get_many_reads_tasks_of_any_tenant_by_id(queue: TaskQueue) -> None:
    ours = await queue.submit(ACME, task(payload={"n": 1}), now=T0)
    theirs = await queue.submit(GLOBEX, task(payload={"n": 2}), now=T0)
    claimed = await must_claim(queue, "w1")
    assert claimed.id == ours.id
    found = await queue.get_many([ours.id, theirs.id, "no-such-task", ours.id])
    assert found == {claimed.id: claimed, theirs.id: await queue.get(theirs.id)}
    assert await queue.get_many([]) == {} and await queue.get_many({"no-such-task"}) == {}


async def test_get_is_scoped_by_tenant(queue: TaskQueue) -> None:
    made = await queue.submit(ACME, task(), now=T0)
    with pytest.raises(NotFoundError):
        await queue.get(made.id, GLOBEX)
    with pytest.raises(NotFoundError):
        await queue.get("no-such-task")


async def test_payloads_and_results_come_back_exactly(queue: TaskQueue) -> None:
    odd = {
        "text": 'é/✓ "quoted" \\ back\nslash\t\u0001',
        "nested": [{"a": [1, 2.5, None, True]}, [], {}],
        "big": 2**53 - 1,
        "empty": "",
    }
    made = await queue.submit(ACME, task(payload=odd, idempotency_key="é/✓"), now=T0)
    assert made.payload == odd and made.idempotency_key == "é/✓"
    assert await queue.submit(ACME, task(idempotency_key="é/✓"), now=T0) == made
    got = await must_claim(queue, "w/é")
    assert got.payload == odd and got.claimed_by == "w/é"
    done = await queue.complete(made.id, "w/é", {"out": odd}, now=T0 + 1)
    assert done.result == {"out": odd} and await queue.get(made.id) == done


@pytest.mark.parametrize(
    "bad",
    [
        {"priority": 101},
        {"priority": -1},
        {"queue": "no spaces"},
        {"queue": ""},
        {"max_retry": -1},
        {"timeout": 0},
        {"type": ""},
        {"idempotency_key": ""},
    ],
)
async def test_invalid_specs_are_refused(queue: TaskQueue, bad: dict[str, Any]) -> None:
    with pytest.raises(BadRequestError):
        await queue.submit(ACME, task(**bad), now=T0)
    assert sum((await queue.stats()).values()) == 0


# -- order -----------------------------------------------------------------------


async def test_higher_priority_is_claimed_first(queue: TaskQueue) -> None:
    low = await queue.submit(ACME, task(priority=1), now=T0)
    high = await queue.submit(ACME, task(priority=9), now=T0)
    mid = await queue.submit(ACME, task(priority=5), now=T0)
    assert await drain(queue) == [high.id, mid.id, low.id]


_example = itertools.count()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(priorities=st.lists(st.integers(0, 4), min_size=1, max_size=12))
async def test_claims_come_out_by_priority_then_submission_order(
    queue: TaskQueue, priorities: list[int]
) -> None:
    name = f"fifo-{next(_example)}"  # each example in a queue of its own
    ids = [(await queue.submit(ACME, task(queue=name, priority=p), now=T0)).id for p in priorities]
    expected = [ids[i] for i in sorted(range(len(ids)), key=lambda i: (-priorities[i], i))]
    assert await drain(queue, queues=(name,)) == expected


async def test_a_retried_task_keeps_its_place(queue: TaskQueue) -> None:
    first = await queue.submit(ACME, task(), now=T0)
    second = await queue.submit(ACME, task(), now=T0)
    assert (await must_claim(queue, "w1", lease=5)).id == first.id
    assert await queue.expire(now=T0 + 5) == 1
    again = await must_claim(queue, "w2", now=T0 + 5)
    assert (again.id, again.attempts) == (first.id, 2)
    assert (await must_claim(queue, "w2", now=T0 + 5)).id == second.id


async def test_claims_span_the_given_queues_only(queue: TaskQueue) -> None:
    default = await queue.submit(ACME, task(priority=3), now=T0)
    gpu = await queue.submit(ACME, task(queue="gpu", priority=8), now=T0)
    other = await queue.submit(ACME, task(queue="other", priority=9), now=T0)
    assert await drain(queue, queues=("default", "gpu")) == [gpu.id, default.id]
    assert await claim(queue, queues=()) is None
    assert await drain(queue, queues=("other",)) == [other.id]


# -- delays ------------------------------------------------------------------------


async def test_delayed_tasks_are_invisible_until_run_at(queue: TaskQueue) -> None:
    later = await queue.submit(ACME, task(run_at=T0 + 60, priority=9), now=T0)
    assert later.state == TaskState.SCHEDULED
    assert later.run_at == utc(T0 + 60)
    ready = await queue.submit(ACME, task(priority=1), now=T0)
    assert (await must_claim(queue, now=T0 + 59.9)).id == ready.id  # lower priority, but ready
    assert await claim(queue, now=T0 + 59.9) is None
    got = await must_claim(queue, now=T0 + 60)
    assert (got.id, got.state, got.attempts) == (later.id, TaskState.ACTIVE, 1)


async def test_a_due_scheduled_task_competes_by_priority(queue: TaskQueue) -> None:
    low = await queue.submit(ACME, task(priority=1), now=T0)
    due = await queue.submit(ACME, task(priority=9, run_at=T0 + 10), now=T0)
    past = await queue.submit(ACME, task(priority=5, run_at=T0 - 10), now=T0)
    assert past.state == TaskState.PENDING  # run_at already passed
    assert await drain(queue, now=T0 + 10) == [due.id, past.id, low.id]


# -- claims, leases, heartbeats ------------------------------------------------------


async def test_claim_marks_the_task_active_under_a_lease(queue: TaskQueue) -> None:
    made = await queue.submit(ACME, task(), now=T0)
    got = await must_claim(queue, "w1", lease=30, now=T0 + 1)
    assert got.id == made.id
    assert (got.state, got.attempts, got.claimed_by) == (TaskState.ACTIVE, 1, "w1")
    assert got.started_at == got.updated_at == utc(T0 + 1)
    assert await queue.get(made.id) == got
    assert await claim(queue, "w2", now=T0 + 1) is None  # nobody else gets it


async def test_heartbeat_extends_the_lease(queue: TaskQueue) -> None:
    made = await queue.submit(ACME, task(), now=T0)
    await must_claim(queue, "w1", lease=10)
    assert await queue.heartbeat(made.id, "w1", 10, now=T0 + 5)  # lease now ends at T0 + 15
    assert await queue.expire(now=T0 + 14.9) == 0
    assert await queue.heartbeat(made.id, "w2", 10, now=T0 + 6) is False  # not the holder
    assert await queue.heartbeat("no-such-task", "w1", 10, now=T0 + 6) is False
    assert await queue.expire(now=T0 + 15) == 1
    assert await queue.heartbeat(made.id, "w1", 10, now=T0 + 16) is False


async def test_an_expired_lease_makes_the_task_claimable_again(queue: TaskQueue) -> None:
    made = await queue.submit(ACME, task(max_retry=3), now=T0)
    await must_claim(queue, "w1", lease=10)
    assert await queue.expire(now=T0 + 9.99) == 0
    assert await queue.expire(now=T0 + 10) == 1
    back = await queue.get(made.id)
    assert (back.state, back.attempts, back.error) == (TaskState.RETRY, 1, LEASE_EXPIRED)
    assert back.run_at == utc(T0 + 10)  # ready at once
    again = await must_claim(queue, "w2", now=T0 + 10)
    assert (again.id, again.attempts, again.claimed_by) == (made.id, 2, "w2")
    with pytest.raises(ConflictError, match="claimed by w2"):
        await queue.complete(made.id, "w1", {"late": True}, now=T0 + 11)
    done = await queue.complete(made.id, "w2", {"ok": True}, now=T0 + 12)
    assert (done.state, done.result, done.error) == (TaskState.SUCCEEDED, {"ok": True}, None)
    assert done.finished_at == utc(T0 + 12)


async def test_expiry_after_the_last_attempt_is_dead(queue: TaskQueue) -> None:
    made = await queue.submit(ACME, task(max_retry=1), now=T0)
    await must_claim(queue, "w1", lease=5)
    assert await queue.expire(now=T0 + 5) == 1
    await must_claim(queue, "w2", lease=5, now=T0 + 5)
    assert await queue.expire(now=T0 + 10) == 1
    dead = await queue.get(made.id)
    assert (dead.state, dead.attempts, dead.finished_at) == (TaskState.DEAD, 2, utc(T0 + 10))
    assert await claim(queue, now=T0 + 100) is None


async def test_a_crashed_workers_claims_are_run_again_exactly_once(queue: TaskQueue) -> None:
    """A node dies holding claims (no heartbeats): every task is re-run by another and
    recorded once as succeeded; none is lost, none completes twice."""
    made = [(await queue.submit(ACME, task(payload={"n": i}), now=T0)).id for i in range(5)]
    held = await drain(queue, node="doomed", lease=15)
    assert sorted(held) == sorted(made)
    assert await claim(queue, "w2", node="n2") is None  # all held by the dead node
    assert await queue.expire(now=T0 + 15) == 5
    completions: Counter[str] = Counter()
    while (got := await claim(queue, "w2", node="n2", now=T0 + 16)) is not None:
        done = await queue.complete(got.id, "w2", {"n": got.payload["n"]}, now=T0 + 17)
        completions[done.id] += 1
    assert completions == Counter(dict.fromkeys(made, 1))
    for task_id in made:
        with pytest.raises(ConflictError):  # the dead node's late reports change nothing
            await queue.complete(task_id, "w1", {}, now=T0 + 18)
        final = await queue.get(task_id)
        assert (final.state, final.attempts, final.claimed_by) == (TaskState.SUCCEEDED, 2, "w2")
    stats = await queue.stats()
    assert stats[TaskState.SUCCEEDED] == 5 and sum(stats.values()) == 5


# -- complete and fail ------------------------------------------------------------------


async def test_only_the_holder_completes(queue: TaskQueue) -> None:
    made = await queue.submit(ACME, task(), now=T0)
    with pytest.raises(ConflictError, match="pending"):
        await queue.complete(made.id, "w1", {}, now=T0)
    await must_claim(queue, "w1")
    with pytest.raises(ConflictError, match="claimed by w1, not w2"):
        await queue.complete(made.id, "w2", {}, now=T0 + 1)
    with pytest.raises(ConflictError):
        await queue.fail(made.id, "w2", "boom", now=T0 + 1)
    with pytest.raises(NotFoundError):
        await queue.complete("no-such-task", "w1", {}, now=T0 + 1)
    assert (await queue.get(made.id)).state == TaskState.ACTIVE
    await queue.complete(made.id, "w1", {"answer": 42}, now=T0 + 2)
    with pytest.raises(ConflictError, match="already succeeded"):
        await queue.complete(made.id, "w1", {"answer": 43}, now=T0 + 3)
    assert (await queue.get(made.id)).result == {"answer": 42}


async def test_a_retryable_failure_waits_for_its_backoff(
    queue: TaskQueue, backoff: RecordingBackoff
) -> None:
    made = await queue.submit(ACME, task(max_retry=3), now=T0)
    await must_claim(queue, "w1")
    failed = await queue.fail(made.id, "w1", "flaky", now=T0 + 1)
    [(attempts, delay)] = backoff.calls
    assert attempts == 1 and 0 <= delay <= 1.0
    assert (failed.state, failed.error, failed.attempts) == (TaskState.RETRY, "flaky", 1)
    assert failed.run_at == utc(T0 + 1 + delay) and failed.finished_at is None
    if delay > 0.001:
        assert await claim(queue, now=T0 + 1 + delay - 0.001) is None
    again = await must_claim(queue, "w2", now=T0 + 1 + delay)
    assert (again.id, again.attempts) == (made.id, 2)


async def test_backoff_grows_between_retries_and_ends_dead(
    queue: TaskQueue, backoff: RecordingBackoff
) -> None:
    made = await queue.submit(ACME, task(max_retry=4), now=T0)
    now = T0
    for attempt in range(1, 6):
        got = await must_claim(queue, "w1", now=now)
        assert got.attempts == attempt
        failed = await queue.fail(made.id, "w1", f"error {attempt}", now=now)
        if attempt <= 4:
            assert failed.state == TaskState.RETRY
            assert failed.run_at == utc(now + backoff.calls[-1][1])
            now += backoff.calls[-1][1]
        else:
            assert (failed.state, failed.error) == (TaskState.DEAD, "error 5")
            assert failed.finished_at == utc(now)
    assert [a for a, _ in backoff.calls] == [1, 2, 3, 4]
    for attempts, delay in backoff.calls:
        assert 0 <= delay <= backoff_ceiling(attempts) == 2.0 ** (attempts - 1)
    assert await claim(queue, now=now + 10_000) is None


async def test_a_permanent_failure_is_not_retried(queue: TaskQueue) -> None:
    made = await queue.submit(ACME, task(max_retry=5), now=T0)
    await must_claim(queue, "w1")
    failed = await queue.fail(made.id, "w1", "bad payload", retryable=False, now=T0 + 1)
    assert (failed.state, failed.attempts, failed.error) == (TaskState.FAILED, 1, "bad payload")
    assert failed.finished_at == utc(T0 + 1)
    assert await claim(queue, now=T0 + 10_000) is None


async def test_zero_retries_means_one_attempt(queue: TaskQueue) -> None:
    made = await queue.submit(ACME, task(max_retry=0), now=T0)
    await must_claim(queue, "w1")
    assert (await queue.fail(made.id, "w1", "x", now=T0)).state == TaskState.DEAD


# -- backoff (pure) ------------------------------------------------------------------------


@given(attempts=st.integers(1, 200), u=st.floats(0, 1, exclude_max=True))
def test_backoff_is_full_jitter_under_a_growing_capped_ceiling(attempts: int, u: float) -> None:
    ceiling = backoff_ceiling(attempts)
    assert ceiling == min(300.0, 2.0 ** (attempts - 1))
    assert backoff_ceiling(attempts + 1) >= ceiling
    assert 0 <= backoff_delay(attempts, u) <= ceiling
    assert backoff_delay(attempts + 1, u) >= backoff_delay(attempts, u)  # same luck, longer wait


def test_backoff_is_seedable_and_spread_out() -> None:
    first, second = Backoff(seed=3), Backoff(seed=3)
    delays = [first(5) for _ in range(200)]
    assert delays == [second(5) for _ in range(200)]
    assert all(0 <= d <= 16 for d in delays)
    assert min(delays) < 4 and max(delays) > 12  # jitter spreads retries over the window
    assert max(Backoff(seed=1)(50) for _ in range(50)) <= 300  # capped at five minutes


# -- cancellation ----------------------------------------------------------------------------


async def test_cancel_a_waiting_task(queue: TaskQueue) -> None:
    pending = await queue.submit(ACME, task(), now=T0)
    scheduled = await queue.submit(ACME, task(run_at=T0 + 60), now=T0)
    for made in (pending, scheduled):
        cancelled = await queue.cancel(made.id, ACME, now=T0 + 1)
        assert (cancelled.state, cancelled.finished_at) == (TaskState.CANCELLED, utc(T0 + 1))
        assert await queue.cancel(made.id, ACME, now=T0 + 2) == cancelled  # idempotent
    assert await claim(queue, now=T0 + 100) is None


async def test_cancel_a_task_waiting_to_retry(queue: TaskQueue) -> None:
    made = await queue.submit(ACME, task(), now=T0)
    await must_claim(queue, "w1")
    await queue.fail(made.id, "w1", "flaky", now=T0)
    assert (await queue.cancel(made.id, ACME, now=T0)).state == TaskState.CANCELLED
    assert await claim(queue, now=T0 + 1000) is None


async def test_cancel_a_running_task_tells_its_holder(queue: TaskQueue) -> None:
    made = await queue.submit(ACME, task(), now=T0)
    await must_claim(queue, "w1", lease=10)
    cancelled = await queue.cancel(made.id, ACME, now=T0 + 1)
    assert (cancelled.state, cancelled.claimed_by) == (TaskState.CANCELLED, "w1")
    assert await queue.heartbeat(made.id, "w1", 10, now=T0 + 2) is False
    with pytest.raises(ConflictError, match="cancelled"):
        await queue.complete(made.id, "w1", {"done": True}, now=T0 + 3)
    with pytest.raises(ConflictError, match="cancelled"):
        await queue.fail(made.id, "w1", "boom", now=T0 + 3)
    assert await queue.expire(now=T0 + 100) == 0
    final = await queue.get(made.id)
    assert (final.state, final.result, final.attempts) == (TaskState.CANCELLED, None, 1)


async def test_finished_and_foreign_tasks_cannot_be_cancelled(queue: TaskQueue) -> None:
    made = await queue.submit(ACME, task(), now=T0)
    with pytest.raises(NotFoundError):
        await queue.cancel(made.id, GLOBEX, now=T0)
    with pytest.raises(NotFoundError):
        await queue.cancel("no-such-task", ACME, now=T0)
    await must_claim(queue, "w1")
    await queue.complete(made.id, "w1", {}, now=T0)
    with pytest.raises(ConflictError, match="succeeded"):
        await queue.cancel(made.id, ACME, now=T0)
    assert (await queue.get(made.id)).state == TaskState.SUCCEEDED


# -- idempotency ---------------------------------------------------------------------------


async def test_an_idempotency_key_names_one_task_per_tenant(queue: TaskQueue) -> None:
    first = await queue.submit(ACME, task(idempotency_key="k1", payload={"v": 1}), now=T0)
    again = await queue.submit(
        ACME, task(idempotency_key="k1", payload={"v": 2}, priority=90), now=T0 + 5
    )
    assert again == first  # the same task, unchanged
    other = await queue.submit(GLOBEX, task(idempotency_key="k1", payload={"v": 3}), now=T0)
    assert other.id != first.id and other.payload == {"v": 3}
    plain = [await queue.submit(ACME, task(), now=T0) for _ in range(2)]
    assert plain[0].id != plain[1].id
    assert (await queue.stats(ACME))[TaskState.PENDING] == 3


async def test_an_idempotency_key_survives_its_task_finishing(queue: TaskQueue) -> None:
    first = await queue.submit(ACME, task(idempotency_key="once"), now=T0)
    await must_claim(queue, "w1")
    done = await queue.complete(first.id, "w1", {"r": 1}, now=T0)
    assert await queue.submit(ACME, task(idempotency_key="once"), now=T0 + 1) == done


async def test_concurrent_submits_with_one_key_make_one_task(queue: TaskQueue) -> None:
    made = await asyncio.gather(
        *(queue.submit(ACME, task(idempotency_key="race"), now=T0) for _ in range(10))
    )
    assert len({t.id for t in made}) == 1
    assert sum((await queue.stats(ACME)).values()) == 1


# -- placement -------------------------------------------------------------------------------


async def test_a_pinned_task_runs_only_on_its_node(queue: TaskQueue) -> None:
    pinned = await queue.submit(ACME, task(node="n2", priority=9), now=T0)
    free = await queue.submit(ACME, task(priority=1), now=T0)
    assert (await must_claim(queue, "w1", node="n1")).id == free.id  # skips, is not blocked
    assert await claim(queue, "w1", node="n1") is None
    got = await must_claim(queue, "w2", node="n2")
    assert (got.id, got.node) == (pinned.id, "n2")


async def test_a_task_needing_a_driver_runs_only_where_it_exists(queue: TaskQueue) -> None:
    vm = await queue.submit(ACME, task(driver="microvm", priority=9), now=T0)
    both = await queue.submit(ACME, task(driver="microvm", node="n3"), now=T0)
    assert await claim(queue, "w1", drivers=("bwrap", "process")) is None
    assert await claim(queue, "w1", drivers=()) is None
    assert (await must_claim(queue, "w2", drivers=("bwrap", "microvm"))).id == vm.id
    assert await claim(queue, "w2", drivers=("microvm",), node="n1") is None
    assert (await must_claim(queue, "w3", drivers=("microvm",), node="n3")).id == both.id


async def test_unconstrained_tasks_go_anywhere(queue: TaskQueue) -> None:
    made = await queue.submit(ACME, task(), now=T0)
    assert (await must_claim(queue, "w9", node="anywhere", drivers=())).id == made.id


# -- concurrency ----------------------------------------------------------------------------


async def test_concurrent_claimers_each_get_distinct_tasks(queue: TaskQueue) -> None:
    made = {(await queue.submit(ACME, task(priority=i % 3), now=T0)).id for i in range(50)}
    claims: list[tuple[str, str]] = []

    async def worker(name: str) -> None:
        while (got := await claim(queue, name)) is not None:
            assert got.claimed_by == name
            claims.append((name, got.id))

    await asyncio.gather(*(worker(f"w{i}") for i in range(20)))
    ids = [task_id for _, task_id in claims]
    assert len(ids) == len(set(ids)) == 50 and set(ids) == made
    for name, task_id in claims:
        current = await queue.get(task_id)
        assert (current.state, current.claimed_by, current.attempts) == (
            TaskState.ACTIVE,
            name,
            1,
        )


# -- list and stats --------------------------------------------------------------------------


async def test_list_is_newest_first_filtered_and_scoped(queue: TaskQueue) -> None:
    made = [
        await queue.submit(
            ACME,
            task(type="vm:create" if i % 2 else "vm:delete", queue="q" + str(i % 3)),
            now=T0 + i,
        )
        for i in range(9)
    ]
    theirs = await queue.submit(GLOBEX, task(type="vm:create"), now=T0)
    newest_first = [t.id for t in reversed(made)]
    assert [t.id for t in await queue.list(ACME)] == newest_first
    assert [t.id for t in await queue.list(GLOBEX)] == [theirs.id]
    assert [t.id for t in await queue.list(ACME, type="vm:create")] == [
        t.id for t in reversed(made) if t.type == "vm:create"
    ]
    assert [t.id for t in await queue.list(ACME, queue="q1")] == [
        made[7].id,
        made[4].id,
        made[1].id,
    ]
    assert [t.id for t in await queue.list(ACME, type="vm:create", queue="q1")] == [
        made[7].id,
        made[1].id,
    ]
    first = await must_claim(queue, "w1", queues=("q0",), now=T0 + 10)
    assert [t.id for t in await queue.list(ACME, state=TaskState.ACTIVE)] == [first.id]
    assert await queue.list(ACME, state=TaskState.DEAD) == []

    page1 = await queue.list(ACME, limit=4)
    page2 = await queue.list(ACME, limit=4, before=page1[-1].id)
    page3 = await queue.list(ACME, limit=4, before=page2[-1].id)
    assert [t.id for t in page1 + page2 + page3] == newest_first
    assert len(page3) == 1
    assert await queue.list(ACME, before=made[0].id) == []
    filtered = await queue.list(ACME, type="vm:delete", limit=2, before=made[7].id)
    assert [t.id for t in filtered] == [made[6].id, made[4].id]
    with pytest.raises(NotFoundError):
        await queue.list(GLOBEX, before=made[3].id)  # another tenant's cursor
    with pytest.raises(BadRequestError):
        await queue.list(ACME, limit=0)


async def test_stats_count_tasks_by_state(queue: TaskQueue) -> None:
    empty = await queue.stats()
    assert empty == dict.fromkeys(TaskState, 0)
    ids = [(await queue.submit(ACME, task(), now=T0)).id for _ in range(6)]
    await queue.submit(ACME, task(run_at=T0 + 100), now=T0)
    await queue.submit(GLOBEX, task(), now=T0)
    a = await must_claim(queue, "w1")
    b = await must_claim(queue, "w1")
    c = await must_claim(queue, "w1")
    d = await must_claim(queue, "w1")
    await queue.complete(a.id, "w1", {}, now=T0)
    await queue.fail(b.id, "w1", "nope", retryable=False, now=T0)
    await queue.fail(c.id, "w1", "again", now=T0)
    await queue.cancel(ids[5], ACME, now=T0)
    assert d.state == TaskState.ACTIVE
    acme = await queue.stats(ACME)
    assert acme == {
        TaskState.PENDING: 1,
        TaskState.SCHEDULED: 1,
        TaskState.ACTIVE: 1,
        TaskState.RETRY: 1,
        TaskState.SUCCEEDED: 1,
        TaskState.FAILED: 1,
        TaskState.DEAD: 0,
        TaskState.CANCELLED: 1,
    }
    everyone = await queue.stats()
    assert everyone[TaskState.PENDING] == 2 and sum(everyone.values()) == 8
    assert sum((await queue.stats(GLOBEX)).values()) == 1


async def test_ready_lag_gives_each_tenant_queue_its_oldest_ready_task(queue: TaskQueue) -> None:
    assert await queue.ready_lag(now=T0) == []
    await queue.submit(ACME, task(), now=T0)
    await queue.submit(ACME, task(), now=T0 + 10)
    await queue.submit(ACME, task(queue="slow"), now=T0 + 5)
    await queue.submit(GLOBEX, task(run_at=T0 + 100), now=T0)  # ready from T0 + 100

    def shown(lags: list[Any]) -> list[tuple[str, str, int, float]]:
        return sorted((g.tenant_id, g.queue, g.ready, g.oldest_ready_at) for g in lags)

    assert shown(await queue.ready_lag(now=T0 + 50)) == [
        (ACME, "default", 2, T0),
        (ACME, "slow", 1, T0 + 5),
    ]
    claimed = await must_claim(queue, now=T0 + 60)  # the oldest: no longer ready
    assert shown(await queue.ready_lag(now=T0 + 200)) == [
        (ACME, "default", 1, T0 + 10),
        (ACME, "slow", 1, T0 + 5),
        (GLOBEX, "default", 1, T0 + 100),
    ]
    await queue.fail(claimed.id, "w1", "again", now=T0 + 300)  # a retry, ready after backoff
    retried = await queue.get(claimed.id)
    lags = shown(await queue.ready_lag(now=retried.run_at.timestamp() + 1))
    assert (ACME, "default", 2, T0 + 10) in lags


async def test_stats_since_count_only_recently_finished_tasks(queue: TaskQueue) -> None:
    submitted = [await queue.submit(ACME, task(), now=T0) for _ in range(3)]
    waiting = submitted[2]
    await queue.submit(GLOBEX, task(), now=T0)
    first = await must_claim(queue, "w1")
    await queue.fail(first.id, "w1", "long ago", retryable=False, now=T0 + 10)
    second = await must_claim(queue, "w1")
    await queue.fail(second.id, "w1", "just now", retryable=False, now=T0 + 5000)
    await queue.cancel(waiting.id, ACME, now=T0 + 20)
    recent_only = await queue.stats(ACME, since=T0 + 1000)
    assert recent_only[TaskState.FAILED] == 1  # the old failure is left out
    assert recent_only[TaskState.CANCELLED] == 0
    assert recent_only[TaskState.PENDING] == (await queue.stats(ACME))[TaskState.PENDING]
    assert (await queue.stats(ACME))[TaskState.FAILED] == 2
    assert (await queue.stats(since=T0 + 1000))[TaskState.FAILED] == 1
    assert (await queue.stats(GLOBEX, since=T0))[TaskState.FAILED] == 0


# -- batches: submit_many, claim_many, complete_many --------------------------------------


async def claim_many(
    queue: TaskQueue,
    worker: str = "w1",
    *,
    limit: int,
    node: str = "n1",
    drivers: tuple[str, ...] = DRIVERS,
    queues: tuple[str, ...] = ("default",),
    lease: float = 30.0,
    now: float = T0,
) -> list[TaskOut]:
    return await queue.claim_many(
        worker, node=node, drivers=drivers, queues=queues, lease=lease, limit=limit, now=now
    )


async def changes_since(queue: TaskQueue, position: int) -> list[tuple[Any, ...]]:
    """The changes recorded after ``position``: task, from, to, attempt, node."""
    return [
        (e.task_id, e.previous, e.state, e.attempt, e.node)
        for e in await queue.events_after(position, 1000)
    ]


async def test_submit_many_stores_each_spec_in_order(queue: TaskQueue) -> None:
    specs = [
        task(payload={"n": 1}, priority=2),
        task(payload={"n": 2}, run_at=T0 + 60, queue="later"),
        task(payload={"n": 3}, node="n2", driver="microvm", max_retry=0, timeout=5),
    ]
    made = await queue.submit_many(ACME, specs, now=T0)
    assert [t.payload for t in made] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [t.state for t in made] == [TaskState.PENDING, TaskState.SCHEDULED, TaskState.PENDING]
    assert (made[1].queue, made[1].run_at, made[2].node) == ("later", utc(T0 + 60), "n2")
    assert (made[2].max_retry, made[2].timeout, made[0].priority) == (0, 5.0, 2)
    assert len({t.id for t in made}) == 3
    for one in made:
        assert await queue.get(one.id, ACME) == one  # the answer is what was stored
    assert await queue.submit_many(ACME, [], now=T0) == []
    assert [t.id for t in await queue.list(ACME)] == [t.id for t in reversed(made)]
    assert await changes_since(queue, 0) == [
        (made[0].id, None, TaskState.PENDING, 0, None),
        (made[1].id, None, TaskState.SCHEDULED, 0, None),
        (made[2].id, None, TaskState.PENDING, 0, None),
    ]
    # submitted in that order: equal priorities are claimed in it
    same = await queue.submit_many(ACME, [task(queue="fifo") for _ in range(4)], now=T0)
    assert await drain(queue, queues=("fifo",)) == [t.id for t in same]


async def test_submit_many_with_one_invalid_spec_stores_nothing(queue: TaskQueue) -> None:
    specs = [task(idempotency_key="first"), task(priority=101), task(payload={"late": 1})]
    with pytest.raises(BadRequestError, match="priority"):
        await queue.submit_many(ACME, specs, now=T0)
    assert sum((await queue.stats()).values()) == 0
    assert await queue.list(ACME) == []
    assert await queue.events_head() == 0
    assert await claim(queue) is None
    # the valid spec's idempotency key was not taken either
    again = await queue.submit(ACME, task(idempotency_key="first", payload={"v": 2}), now=T0)
    assert again.payload == {"v": 2}


async def test_submit_many_honours_idempotency_keys_inside_and_across_batches(
    queue: TaskQueue,
) -> None:
    before = await queue.submit(ACME, task(idempotency_key="a", payload={"v": 0}), now=T0)
    head = await queue.events_head()
    made = await queue.submit_many(
        ACME,
        [
            task(idempotency_key="a", payload={"v": 1}),  # used before: that task, unchanged
            task(idempotency_key="b", payload={"v": 2}),
            task(idempotency_key="b", payload={"v": 3}, priority=90),  # the first "b"
            task(payload={"v": 4}),
            task(payload={"v": 4}),  # no key: another task
        ],
        now=T0 + 1,
    )
    assert made[0] == before
    assert made[2] == made[1] and made[1].payload == {"v": 2} and made[1].priority == 5
    assert made[3].id != made[4].id and made[3].id not in (before.id, made[1].id)
    assert (await queue.stats(ACME))[TaskState.PENDING] == 4
    assert [c[0] for c in await changes_since(queue, head)] == [m.id for m in made[1:2] + made[3:]]
    later = await queue.submit_many(
        ACME, [task(idempotency_key="b"), task(idempotency_key="c")], now=T0 + 2
    )
    assert later[0] == made[1]
    theirs = await queue.submit_many(GLOBEX, [task(idempotency_key="b")], now=T0 + 2)
    assert theirs[0].id not in (made[1].id, later[1].id)  # the same key in another tenant


async def test_claim_many_takes_up_to_limit_in_claim_order(queue: TaskQueue) -> None:
    priorities = [1, 9, 5, 9, 0, 5, 3]
    made = await queue.submit_many(ACME, [task(priority=p) for p in priorities], now=T0)
    order = [made[i].id for i in sorted(range(7), key=lambda i: (-priorities[i], i))]
    first = await claim_many(queue, "w1", limit=3, lease=20, now=T0 + 1)
    assert [t.id for t in first] == order[:3]
    for got in first:
        assert (got.state, got.attempts, got.claimed_by) == (TaskState.ACTIVE, 1, "w1")
        assert got.started_at == got.updated_at == utc(T0 + 1)
        assert await queue.get(got.id) == got
    rest = await claim_many(queue, "w2", limit=10, now=T0 + 1)  # fewer are ready than asked
    assert [t.id for t in rest] == order[3:]
    assert await claim_many(queue, "w3", limit=5, now=T0 + 1) == []
    assert await claim_many(queue, "w3", limit=5, queues=(), now=T0 + 1) == []
    # the leases are the claim's: the first batch expires at T0 + 21, the rest at T0 + 31
    assert await queue.expire(now=T0 + 21) == 3
    again = await claim_many(queue, "w4", limit=8, now=T0 + 21)
    assert [(t.id, t.attempts) for t in again] == [(i, 2) for i in order[:3]]  # kept places


async def test_claim_many_places_tasks_and_moves_due_ones_first(queue: TaskQueue) -> None:
    pinned = await queue.submit(ACME, task(node="n2", priority=9), now=T0)
    needs_vm = await queue.submit(ACME, task(driver="microvm", priority=9), now=T0)
    elsewhere = await queue.submit(ACME, task(queue="gpu", priority=9), now=T0)
    free = await queue.submit(ACME, task(priority=1), now=T0)
    due = await queue.submit(ACME, task(priority=7, run_at=T0 + 10), now=T0)
    later = await queue.submit(ACME, task(priority=8, run_at=T0 + 99), now=T0)
    for_n1 = await claim_many(queue, "w1", limit=10, drivers=("bwrap",), now=T0 + 10)
    assert [t.id for t in for_n1] == [due.id, free.id]
    assert await claim_many(queue, "w1", limit=10, drivers=("bwrap",), now=T0 + 10) == []
    on_n2 = await claim_many(
        queue,
        "w2",
        limit=10,
        node="n2",
        drivers=("microvm",),
        queues=("default", "gpu"),
        now=T0 + 10,
    )
    assert [t.id for t in on_n2] == [pinned.id, needs_vm.id, elsewhere.id]  # submission order
    assert [t.id for t in await claim_many(queue, "w3", limit=2, now=T0 + 99)] == [later.id]


async def test_claim_many_logs_one_event_per_claim(queue: TaskQueue) -> None:
    waiting = await queue.submit(ACME, task(priority=9, run_at=T0 + 5), now=T0)
    retried = await queue.submit(GLOBEX, task(priority=5), now=T0)
    fresh = await queue.submit(ACME, task(priority=1), now=T0)
    assert (await must_claim(queue, "w0", now=T0, lease=1)).id == retried.id
    assert await queue.expire(now=T0 + 1) == 1  # back as retry
    head = await queue.events_head()
    got = await claim_many(queue, "w1", limit=5, now=T0 + 5)
    assert [t.id for t in got] == [waiting.id, retried.id, fresh.id]
    # logged in claim order, as claims one at a time would have logged them
    assert await changes_since(queue, head) == [
        (waiting.id, TaskState.SCHEDULED, TaskState.ACTIVE, 1, "w1"),
        (retried.id, TaskState.RETRY, TaskState.ACTIVE, 2, "w1"),
        (fresh.id, TaskState.PENDING, TaskState.ACTIVE, 1, "w1"),
    ]
    stats = await queue.stats()
    assert stats[TaskState.ACTIVE] == 3 and sum(stats.values()) == 3


async def test_complete_many_answers_each_completion_as_complete_would(queue: TaskQueue) -> None:
    made = await queue.submit_many(ACME, [task(payload={"n": i}) for i in range(6)], now=T0)
    ids = [t.id for t in made]
    mine = await claim_many(queue, "w1", limit=2, lease=10, now=T0)
    assert [t.id for t in mine] == ids[:2]
    theirs = await must_claim(queue, "w2", lease=10, now=T0)  # task 2
    assert await queue.expire(now=T0 + 10) == 3
    retaken = await claim_many(queue, "w1", limit=2, lease=100, now=T0 + 10)  # 0 and 1 again
    assert [(t.id, t.attempts) for t in retaken] == [(ids[0], 2), (ids[1], 2)]
    held_by_w2 = await must_claim(queue, "w2", lease=100, now=T0 + 10)  # task 2 again
    assert held_by_w2.id == theirs.id
    head = await queue.events_head()
    answers = await queue.complete_many(
        "w1",
        [
            Completion(ids[0], {"r": 0}, attempt=2),  # held, by this attempt
            Completion(ids[1], {"r": 1}, attempt=1),  # held, but by a later attempt
            Completion(ids[2], {"r": 2}),  # held by another worker
            Completion(ids[3], {"r": 3}),  # never claimed
            Completion("no-such-task", {}),
            Completion(ids[0], {"r": "twice"}),  # already completed just above
        ],
        now=T0 + 11,
    )
    done = answers[0]
    assert isinstance(done, TaskOut)
    assert (done.id, done.state, done.result, done.finished_at) == (
        ids[0],
        TaskState.SUCCEEDED,
        {"r": 0},
        utc(T0 + 11),
    )
    assert await queue.get(ids[0]) == done
    assert [type(a) for a in answers[1:]] == [
        ConflictError,
        ConflictError,
        ConflictError,
        NotFoundError,
        ConflictError,
    ]
    # the same messages as ``complete`` raises
    for answer, task_id in zip(answers[2:], [ids[2], ids[3], "no-such-task", ids[0]], strict=True):
        with pytest.raises((ConflictError, NotFoundError)) as raised:
            await queue.complete(task_id, "w1", {}, now=T0 + 12)
        assert str(raised.value) == str(answer)
    assert "already succeeded" in str(answers[5])
    assert (
        str(answers[1]) == f"task {ids[1]}: attempt 1 of w1 was taken back; attempt 2 holds it now"
    )
    # refused completions left their tasks unchanged
    wrong_attempt = await queue.get(ids[1])
    assert (wrong_attempt.state, wrong_attempt.attempts, wrong_attempt.result) == (
        TaskState.ACTIVE,
        2,
        None,
    )
    assert await queue.get(ids[2]) == held_by_w2
    assert (await queue.get(ids[3])).state == TaskState.PENDING
    assert await changes_since(queue, head) == [
        (ids[0], TaskState.ACTIVE, TaskState.SUCCEEDED, 2, "w1")
    ]
    assert await queue.complete_many("w1", [], now=T0 + 12) == []
    # a completion naming the attempt that holds the task completes it
    [second] = await queue.complete_many("w1", [Completion(ids[1], {"r": 1}, 2)], now=T0 + 13)
    assert isinstance(second, TaskOut) and second.state == TaskState.SUCCEEDED


async def test_batches_run_a_burst_to_the_end(queue: TaskQueue) -> None:
    """Claim 8, complete 8, until done: every task succeeds once, in claim order."""
    made = await queue.submit_many(
        ACME, [task(priority=i % 4, payload={"n": i}) for i in range(30)], now=T0
    )
    finished: list[str] = []
    while got := await claim_many(queue, "w1", limit=8, now=T0 + 1):
        answers = await queue.complete_many(
            "w1", [Completion(t.id, {"n": t.payload["n"]}, t.attempts) for t in got], now=T0 + 2
        )
        assert all(isinstance(a, TaskOut) and a.state == TaskState.SUCCEEDED for a in answers)
        finished += [t.id for t in got]
    priorities = {t.id: t.priority for t in made}
    assert sorted(finished) == sorted(priorities)
    assert [priorities[i] for i in finished] == sorted(priorities.values(), reverse=True)
    stats = await queue.stats()
    assert stats[TaskState.SUCCEEDED] == 30 and sum(stats.values()) == 30


async def test_concurrent_batch_claimers_never_share_a_task(queue: TaskQueue) -> None:
    made = {t.id for t in await queue.submit_many(ACME, [task() for _ in range(60)], now=T0)}
    claims: list[tuple[str, str]] = []

    async def worker(name: str) -> None:
        while got := await claim_many(queue, name, limit=4):
            assert {t.claimed_by for t in got} == {name} and len(got) <= 4
            claims.extend((name, t.id) for t in got)

    await asyncio.gather(*(worker(f"w{i}") for i in range(8)))
    ids = [task_id for _, task_id in claims]
    assert len(ids) == len(set(ids)) == 60 and set(ids) == made
    for name, task_id in claims:
        current = await queue.get(task_id)
        assert (current.state, current.claimed_by, current.attempts) == (
            TaskState.ACTIVE,
            name,
            1,
        )

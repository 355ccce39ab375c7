"""A task's attempts from its state changes."""

from __future__ import annotations

from aether.core.task_history import attempts
from aether.model.tasks import TaskEvent, TaskState

S = TaskState


def _change(
    state: TaskState, previous: TaskState | None, ts: float, attempt: int, **extra: object
) -> TaskEvent:
    fields: dict[str, object] = {"node": None, "error": None, **extra}
    return TaskEvent(
        position=int(ts),
        task_id="t1",
        tenant_id="acme",
        task_type="job:run",
        state=state,
        previous=previous,
        queue="default",
        priority=0,
        attempt=attempt,
        node=fields["node"],  # type: ignore[arg-type]
        error=fields["error"],  # type: ignore[arg-type]
        ts=ts,
    )


def test_a_retried_then_successful_task_has_two_attempts() -> None:
    history = [
        _change(S.PENDING, None, 100, 0),
        _change(S.ACTIVE, S.PENDING, 101, 1, node="n1"),
        _change(S.RETRY, S.ACTIVE, 104, 1, node="n1", error="exit 3"),
        _change(S.ACTIVE, S.RETRY, 110, 2, node="n2"),
        _change(S.SUCCEEDED, S.ACTIVE, 112.5, 2, node="n2"),
    ]
    first, second = attempts(history)
    assert (first.number, first.node, first.outcome, first.error, first.seconds) == (
        1,
        "n1",
        S.RETRY,
        "exit 3",
        3.0,
    )
    assert (second.number, second.node, second.outcome, second.seconds) == (
        2,
        "n2",
        S.SUCCEEDED,
        2.5,
    )


def test_a_running_attempt_has_no_end_and_a_queued_task_none() -> None:
    assert attempts([_change(S.PENDING, None, 1, 0)]) == []
    (only,) = attempts([_change(S.PENDING, None, 1, 0), _change(S.ACTIVE, S.PENDING, 2, 1)])
    assert only.ended_at is None and only.outcome is None and only.seconds is None


def test_a_cancelled_claim_ends_its_attempt_as_cancelled() -> None:
    history = [_change(S.ACTIVE, S.PENDING, 5, 1, node="n1"), _change(S.CANCELLED, S.ACTIVE, 9, 1)]
    (only,) = attempts(history)
    assert only.outcome is S.CANCELLED and only.seconds == 4

"""A task's attempts, from its recorded state changes (pure).

A claim (a change to ``active``) starts an attempt on the claiming node; the next
change ends it: ``succeeded``, ``failed`` or ``dead`` with the error, ``retry``
(it failed, or its lease expired and the task went back to the queue), or
``cancelled``. The queue's log keeps the newest changes only, so an attempt whose
start was trimmed away is not listed.
"""

from __future__ import annotations

from collections.abc import Iterable

from aether.model.tasks import AttemptOut, TaskEvent, TaskState

__all__ = ["attempts"]


def attempts(events: Iterable[TaskEvent]) -> list[AttemptOut]:
    """The attempts the changes (oldest first) make, oldest first."""
    out: list[AttemptOut] = []
    running: AttemptOut | None = None
    for event in events:
        if running is not None:
            running.ended_at = event.ts
            running.outcome = event.state
            running.error = event.error
            running.seconds = round(event.ts - running.started_at, 3)
            running = None
        if event.state is TaskState.ACTIVE:
            running = AttemptOut(number=event.attempt, node=event.node, started_at=event.ts)
            out.append(running)
    return out

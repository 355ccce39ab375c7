"""The cluster event stream's vocabulary (``GET /api/v1/events``).

A :class:`ClusterEvent` is one typed change of the cluster (a node joined, an
instance changed state, a deployment step, a decision, …). Who may see it is
its ``scope``: ``cluster`` (every caller with a token: nodes, the leader, risk,
drains), ``admin`` (the default tenant's admins only: adviser failures),
``operator`` (the default tenant's operators and admins: cluster alerts) or
``tenant`` (the callers of ``tenant`` only: apps, instances, deployments,
migrations, tasks, their alerts). :class:`Cursor` is where a stream stands; its text form is
every event's SSE ``id``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from aether.model.versioned import VERSION_FIELD

__all__ = [
    "EVENT_TYPES",
    "ClusterEvent",
    "Cursor",
    "EventType",
    "Scope",
]

EventType = Literal[
    "node_joined",
    "node_lost",
    "node_drained",
    "node_undrained",
    "leader_changed",
    "instance_state",
    "instance_removed",
    "blueprint_changed",
    "deployment",
    "migration",
    "decision",
    "risk_changed",
    "task_state",
    "alert",
]
#: every type a client may filter on; ``ready`` and ``gap`` are always sent
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]
Scope = Literal["cluster", "admin", "operator", "tenant"]

_CURSOR_RE = re.compile(r"^(\d{1,18})-(\d{1,18})-(\d{1,18})-(\d{1,18})(?:-(\d{1,18}))?$")


@dataclass(frozen=True)
class Cursor:
    """A position in the stream: the state store revision, per record source the id
    of the last row seen (deployment events, decisions, risk assessments) and the
    position of the last task state change seen in the task queue's event log.

    Written ``REVISION-DEPLOYMENT_EVENT-DECISION-RISK-TASK`` (``1234-56-7-89-310``):
    every server reads the same store, records and queue, so any server resumes
    from it. An id of four parts (from before tasks were on the stream) has
    ``task`` None: it names no task position, and resumes tasks from now.
    """

    revision: int = 0
    deployment_event: int = 0
    decision: int = 0
    risk: int = 0
    task: int | None = 0

    def __str__(self) -> str:
        head = f"{self.revision}-{self.deployment_event}-{self.decision}-{self.risk}"
        return head if self.task is None else f"{head}-{self.task}"

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        """The cursor written in ``text``, or None when it is not one."""
        match = _CURSOR_RE.match(text.strip())
        if match is None:
            return None
        revision, deployment_event, decision, risk, task = match.groups()
        return cls(
            int(revision),
            int(deployment_event),
            int(decision),
            int(risk),
            None if task is None else int(task),
        )


class ClusterEvent(BaseModel):
    """One typed change. ``target`` is what it is about: a node id, an app name,
    the leader's id, a task id; ``app`` and ``node`` are set when they apply.
    ``fields`` are the type's own figures (see docs/api.md)."""

    type: EventType
    target: str
    ts: float
    scope: Scope = "tenant"
    tenant: str | None = None
    app: str | None = None
    node: str | None = None
    fields: dict[str, Any] = Field(default_factory=dict)

    SCHEMA_VERSION: ClassVar[int] = 1  # of what the stream sends (``wire``)

    def wire(self, event_id: str) -> dict[str, Any]:
        """What the stream sends as ``data:`` (the scope and tenant stay on the server),
        with its schema version."""
        out: dict[str, Any] = {"id": event_id, "type": self.type, "target": self.target}
        out["ts"] = self.ts
        if self.app is not None:
            out["app"] = self.app
        if self.node is not None:
            out["node"] = self.node
        out.update(self.fields)
        out[VERSION_FIELD] = self.SCHEMA_VERSION
        return out

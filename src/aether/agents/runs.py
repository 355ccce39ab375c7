"""Runs of an agent: the steps so far decide the next one (pure: no I/O, no clock).

A run is a sequence of **steps**: a ``model`` step (one chat completion: the text and
the tool calls the model asked for) or a ``tool`` step (one of those calls: the policy's
decision, a person's approval when the policy asks for one, the execution and its
output). Only the recorded steps say where a run is, so whoever drives it next (any
node, after a crash) asks ``next_move`` and continues from the last completed step:

- no model step yet, or every call of the last one resolved → ask the model;
- the last model step asked for nothing → the run is finished, its text the output;
- a call with no tool step yet → decide it (the policy);
- a call waiting for approval → wait; approved → run it; running → run it again with
  the same idempotency key (an interrupted execution; a finished one is never re-run).

``transcript`` turns the steps back into the chat messages the model is sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aether.agents.policy import Policy

__all__ = [
    "CONCURRENCY",
    "FINAL_STATUSES",
    "RESOLVED_TOOL_STATUSES",
    "RUN_STATUSES",
    "AskModel",
    "Decide",
    "Execute",
    "Finish",
    "Move",
    "Step",
    "WaitApproval",
    "cost_of",
    "model_stop",
    "next_move",
    "step_key",
    "tool_message",
    "transcript",
]

RUN_STATUSES = (
    "queued",
    "running",
    "requires_approval",
    "completed",
    "failed",
    "cancelled",
    "expired",
)
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "expired"})
#: what a second run on a busy thread does: refused, queued behind, or the busy one stopped
CONCURRENCY = ("reject", "enqueue", "interrupt")
#: a tool step in one of these has its result: the model may be asked again
RESOLVED_TOOL_STATUSES = frozenset({"completed", "failed", "denied", "rejected"})

StepKind = Literal["model", "tool"]


@dataclass(frozen=True, slots=True)
class Step:
    """What the next move needs of a recorded step."""

    seq: int
    kind: StepKind
    status: str
    call_id: str | None = None
    tool_id: str | None = None
    arguments: Mapping[str, Any] | None = None
    content: str | None = None  # the model's text, or the tool's output
    tool_calls: Sequence[Mapping[str, Any]] = ()  # [{id, name, arguments}] of a model step


@dataclass(frozen=True, slots=True)
class AskModel:
    pass


@dataclass(frozen=True, slots=True)
class Finish:
    output: str


@dataclass(frozen=True, slots=True)
class Decide:
    """Decide the call ``call`` (``{id, name, arguments}``) of model step ``after``."""

    call: Mapping[str, Any]
    after: int


@dataclass(frozen=True, slots=True)
class WaitApproval:
    step: Step


@dataclass(frozen=True, slots=True)
class Execute:
    step: Step


Move = AskModel | Finish | Decide | WaitApproval | Execute


def step_key(run_id: str, what: str) -> str:
    """A step's idempotency key: ``{run}:{call id}`` for a tool call, ``{run}:model:{n}``."""
    return f"{run_id}:{what}"


def next_move(steps: Sequence[Step]) -> Move:
    """What to do next, given the run's steps in order."""
    model_steps = [s for s in steps if s.kind == "model" and s.status == "completed"]
    if not model_steps:
        return AskModel()
    last = model_steps[-1]
    if not last.tool_calls:
        return Finish(last.content or "")
    by_call = {s.call_id: s for s in steps if s.kind == "tool" and s.seq > last.seq}
    for call in last.tool_calls:
        step = by_call.get(str(call.get("id")))
        if step is None:
            return Decide(call, last.seq)
        if step.status in RESOLVED_TOOL_STATUSES:
            continue
        if step.status == "pending_approval":
            return WaitApproval(step)
        return Execute(step)  # approved, or running (interrupted: again, same key)
    return AskModel()


def tool_message(step: Step) -> str:
    """What the model is told a tool call gave (its output, or why it did not run)."""
    text = step.content or ""
    if step.status == "completed":
        return text
    if step.status == "denied":
        return f"error: the policy denied this call: {text}"
    if step.status == "rejected":
        return f"error: a person rejected this call: {text}"
    return f"error: the tool failed: {text}"


def transcript(
    system_prompt: str,
    history: Sequence[Mapping[str, Any]],
    user_input: str,
    steps: Sequence[Step],
) -> list[dict[str, Any]]:
    """The chat messages for the model: system prompt, the thread's earlier turns, this
    run's input, then each model step and the results of its calls."""
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.extend(dict(m) for m in history)
    messages.append({"role": "user", "content": user_input})
    resolved = {
        s.call_id: s for s in steps if s.kind == "tool" and s.status in RESOLVED_TOOL_STATUSES
    }
    for step in steps:
        if step.kind != "model" or step.status != "completed":
            continue
        assistant: dict[str, Any] = {"role": "assistant", "content": step.content or ""}
        if step.tool_calls:
            assistant["tool_calls"] = [_wire_call(c) for c in step.tool_calls]
        messages.append(assistant)
        for call in step.tool_calls:
            done = resolved.get(str(call.get("id")))
            if done is not None:
                messages.append(
                    {"role": "tool", "tool_call_id": done.call_id, "content": tool_message(done)}
                )
    return messages


def _wire_call(call: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": call.get("id"),
        "type": "function",
        "function": {"name": call.get("name"), "arguments": json.dumps(call.get("arguments", {}))},
    }


def cost_of(
    tokens_in: int, tokens_out: int, price_in_per_1k: float, price_out_per_1k: float
) -> float:
    return tokens_in / 1000 * price_in_per_1k + tokens_out / 1000 * price_out_per_1k


def _tightest(values: Sequence[int | None]) -> int | None:
    given = [v for v in values if v is not None]
    return min(given) if given else None


def model_stop(
    policies: Sequence[Policy],
    *,
    steps: int,
    tokens_run: int,
    tokens_agent_day: int,
    tokens_tenant_day: int,
) -> tuple[str, str] | None:
    """Why the run may not ask the model again (stop reason, message), or None.

    Every policy of the agent applies: the tightest of their limits holds."""
    max_steps = _tightest([p.max_steps for p in policies])
    if max_steps is not None and steps >= max_steps:
        return "max_steps", f"the run has taken its {max_steps} steps"
    checks = (
        ([p.token_budgets.per_run for p in policies], tokens_run, "the run used its budget"),
        (
            [p.token_budgets.per_agent_per_day for p in policies],
            tokens_agent_day,
            "the agent used its daily budget",
        ),
        (
            [p.token_budgets.per_tenant_per_day for p in policies],
            tokens_tenant_day,
            "the tenant used its daily budget",
        ),
    )
    for limits, used, what in checks:
        limit = _tightest(limits)
        if limit is not None and used >= limit:
            return "budget", f"{what} of {limit} tokens ({used} used)"
    return None

"""Policies: which tools an agent (or a user) may call, with which arguments, within
which budgets — decided by the Cedar policy engine.

A ``Policy`` is translated to Cedar policy text (``to_cedar``): one ``permit`` for
the allowed tools, one ``forbid`` per argument constraint, counter and budget, and
the egress rule; approval is a second action, ``call_unattended``, which the tools
needing a person's approval are forbidden. ``decide`` asks Cedar about both actions
for one call (principal ``Aether::Agent::"id"`` or ``Aether::User::"id"``, action
``Aether::Action::"call"``, resource ``Aether::Tool::"id"``, context: the arguments
and the run's counters) and is pure: no I/O, no clock. An evaluation error (an
argument of the wrong type for a constraint) denies: fail closed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import cedarpy
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aether.agents.tools import ID_PATTERN

__all__ = [
    "DEFAULT_SAFE",
    "ArgConstraint",
    "Counters",
    "Decision",
    "DecisionRequest",
    "Policy",
    "RecordedCall",
    "Replayed",
    "TokenBudgets",
    "decide",
    "redact_arguments",
    "simulate",
    "to_cedar",
]

_ToolRef = Annotated[str, Field(pattern=r"^(\*|[a-z0-9][a-z0-9_-]{0,63})$")]
_Count = Annotated[int, Field(ge=0, le=1 << 53)]
#: an argument a constraint names (a Cedar attribute name)
_ARG = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
#: a program an ``allow`` constraint lets a command start with
_PROGRAM = r"^[A-Za-z0-9._/+-]{1,128}$"
_HOST = r"^(\*\.)?[A-Za-z0-9.-]{1,253}$"
Outcome = Literal["allow", "deny", "approval"]


class ArgConstraint(BaseModel):
    """A constraint on one argument of a tool (``*``: of every tool), exactly one of:

    - ``allow``: programs a command may run: the value is one of them, or starts with
      one and a space (``["ls", "cat"]`` lets ``ls -la`` through, not ``rm``), and it
      holds none of ``; | & ` $ > <`` nor a newline (nothing chained on in a shell);
    - ``one_of``: the value is one of these strings;
    - ``like``: the value matches this glob (``*`` any characters; Cedar's ``like``);
    - ``max_length``: the value is a string of at most this many characters.

    An argument the call does not give is not constrained (its schema says whether
    it is required); a value of another type than a constraint expects is denied.
    """

    model_config = ConfigDict(extra="forbid")

    tool: _ToolRef
    arg: Annotated[str, Field(pattern=_ARG)]
    allow: list[Annotated[str, Field(pattern=_PROGRAM)]] | None = Field(
        default=None, min_length=1, max_length=256
    )
    one_of: list[Annotated[str, Field(max_length=1024)]] | None = Field(
        default=None, min_length=1, max_length=256
    )
    like: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    max_length: Annotated[int, Field(ge=0, le=1 << 30)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ArgConstraint:
        given = [
            k for k in ("allow", "one_of", "like", "max_length") if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "a constraint has exactly one of allow, one_of, like, max_length"
                + (f" (this one has {', '.join(given)})" if given else "")
            )
        return self

    def describe(self) -> str:
        tool = "any tool" if self.tool == "*" else repr(self.tool)
        where = f"argument {self.arg!r} of {tool}"
        if self.allow is not None:
            return f"{where} must run one of: {', '.join(self.allow)}"
        if self.one_of is not None:
            return f"{where} must be one of: {', '.join(self.one_of)}"
        if self.like is not None:
            return f"{where} must match {self.like!r}"
        return f"{where} must be a string of at most {self.max_length} characters"


class TokenBudgets(BaseModel):
    """Model tokens a run, an agent in a day, the tenant in a day may use (None: no cap)."""

    model_config = ConfigDict(extra="forbid")

    per_run: _Count | None = None
    per_agent_per_day: _Count | None = None
    per_tenant_per_day: _Count | None = None


class Policy(BaseModel):
    """A policy (what ``POST /api/v1/policies`` takes)."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=ID_PATTERN)]
    description: Annotated[str, Field(max_length=1000)] = ""
    tools: list[_ToolRef] = Field(default_factory=list, max_length=1024)
    constraints: list[ArgConstraint] = Field(default_factory=list, max_length=256)
    approval_required: list[_ToolRef] = Field(default_factory=list, max_length=1024)
    max_steps: _Count | None = None
    max_tool_calls: _Count | None = None
    token_budgets: TokenBudgets = Field(default_factory=TokenBudgets)
    egress_hosts: list[Annotated[str, Field(pattern=_HOST)]] = Field(
        default_factory=list, max_length=256
    )
    redact: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=256
    )

    @model_validator(mode="after")
    def _compiles(self) -> Policy:
        """The engine parses its translation (a policy it cannot read is refused here,
        not at the first decision)."""
        try:
            cedarpy.PolicySet.from_str(to_cedar(self))
        except ValueError as exc:
            raise ValueError(f"the policy does not translate to Cedar: {exc}") from None
        return self


class Counters(BaseModel):
    """What the run (and the agent, the tenant today) used before this call."""

    model_config = ConfigDict(extra="forbid")

    steps: _Count = 0
    tool_calls: _Count = 0
    tokens_run: _Count = 0
    tokens_agent_day: _Count = 0
    tokens_tenant_day: _Count = 0


class DecisionRequest(BaseModel):
    """One tool call to decide on."""

    model_config = ConfigDict(extra="forbid")

    principal_kind: Literal["agent", "user"] = "agent"
    principal: Annotated[str, Field(min_length=1, max_length=128)]
    tool_id: Annotated[str, Field(pattern=ID_PATTERN)]
    arguments: dict[str, Any] = Field(default_factory=dict)
    counters: Counters = Field(default_factory=Counters)
    hosts: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list, max_length=64
    )


@dataclass(frozen=True, slots=True)
class Decision:
    """Cedar's answer: allowed (perhaps only with approval), why, and which rules of
    which policy decided (``policy_ids``: ``POLICY#rule``)."""

    allowed: bool
    needs_approval: bool
    reasons: list[str] = field(default_factory=list)
    policy_ids: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> Outcome:
        if not self.allowed:
            return "deny"
        return "approval" if self.needs_approval else "allow"


# -- the translation ---------------------------------------------------------------------

_CALL = 'Aether::Action::"call"'
_UNATTENDED = 'Aether::Action::"call_unattended"'


def _string(value: str) -> str:
    """A Cedar string literal (in a ``like`` pattern its ``*`` is the wildcard)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _tool(tool_id: str) -> str:
    return f"Aether::Tool::{_string(tool_id)}"


def _tools_set(ids: Iterable[str]) -> str:
    return "[" + ", ".join(_tool(i) for i in ids) + "]"


def _on(tools: Sequence[str]) -> str:
    """A ``when`` clause limiting a rule to ``tools`` (empty when it names ``*``)."""
    return "" if "*" in tools else f"{_tools_set(tools)}.contains(resource) && "


#: what would chain another program onto an allowed one in a shell
_CHAINING = (";", "|", "&", "`", "$", ">", "<", "\n")


def _constraint_condition(c: ArgConstraint) -> str:
    value = f"context.args[{_string(c.arg)}]"
    if c.allow is not None:
        chained = " || ".join(f"{value} like {_string('*' + m + '*')}" for m in _CHAINING)
        alts = [f"{value} == {_string(p)} || {value} like {_string(p + ' *')}" for p in c.allow]
        return f"({' || '.join(alts)}) && !({chained})"
    if c.one_of is not None:
        return f"[{', '.join(_string(v) for v in c.one_of)}].contains({value})"
    if c.like is not None:
        return f"{value} like {_string(c.like)}"
    name = _string(c.arg)
    return f"context.lengths has {name} && context.lengths[{name}] <= {c.max_length}"


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    reason: str
    cedar: str


def _rules(policy: Policy) -> list[_Rule]:
    rules: list[_Rule] = []
    if policy.tools:
        scope = "true" if "*" in policy.tools else f"{_tools_set(policy.tools)}.contains(resource)"
        rules.append(
            _Rule(
                "tools",
                "the tool is allowed",
                f"permit(principal, action == {_CALL}, resource) when {{ {scope} }};",
            )
        )
    for n, c in enumerate(policy.constraints):
        scope = "resource" if c.tool == "*" else f"resource == {_tool(c.tool)}"
        rules.append(
            _Rule(
                f"constraint[{n}]",
                c.describe(),
                f"forbid(principal, action == {_CALL}, {scope}) when "
                f"{{ context.args has {_string(c.arg)} && !({_constraint_condition(c)}) }};",
            )
        )
    limits = (
        ("max_steps", policy.max_steps, "steps", "the run has taken its {} steps"),
        ("max_tool_calls", policy.max_tool_calls, "tool_calls", "the run made its {} tool calls"),
        (
            "per_run",
            policy.token_budgets.per_run,
            "tokens_run",
            "the run used its budget of {} tokens",
        ),
        (
            "per_agent_per_day",
            policy.token_budgets.per_agent_per_day,
            "tokens_agent_day",
            "the agent used its budget of {} tokens today",
        ),
        (
            "per_tenant_per_day",
            policy.token_budgets.per_tenant_per_day,
            "tokens_tenant_day",
            "the tenant used its budget of {} tokens today",
        ),
    )
    for name, limit, counter, reason in limits:
        if limit is not None:
            rules.append(
                _Rule(
                    name,
                    reason.format(limit),
                    f"forbid(principal, action == {_CALL}, resource) "
                    f"when {{ context.{counter} >= {limit} }};",
                )
            )
    hosts = ", ".join(_string(h) for h in policy.egress_hosts)
    allowed = policy.egress_hosts or ["no host"]
    rules.append(
        _Rule(
            "egress",
            f"the call reaches a host the policy does not allow (allowed: {', '.join(allowed)})",
            f"forbid(principal, action == {_CALL}, resource) "
            f"when {{ !([{hosts}].containsAll(context.hosts)) }};",
        )
    )
    rules.append(
        _Rule(
            "unattended",
            "no approval needed",
            f"permit(principal, action == {_UNATTENDED}, resource);",
        )
    )
    if policy.approval_required:
        rules.append(
            _Rule(
                "approval",
                "the tool needs a person's approval",
                f"forbid(principal, action == {_UNATTENDED}, resource) "
                f"when {{ {_on(policy.approval_required)}true }};",
            )
        )
    return rules


def to_cedar(policy: Policy) -> str:
    """The policy as Cedar policy text, one rule per statement, each labelled ``@id``."""
    return "\n".join(f'@id("{r.name}")\n{r.cedar}' for r in _rules(policy))


#: in every tenant; not a record: it cannot be changed or deleted
DEFAULT_SAFE = Policy(
    id="default-safe",
    description="Read-only tools; code and commands only with a person's approval; no egress",
    tools=["search", "cluster-status", "apps-list", "run-code", "run-command"],
    approval_required=["run-code", "run-command"],
    max_steps=20,
    max_tool_calls=20,
    token_budgets=TokenBudgets(per_run=50_000),
)


@functools.lru_cache(maxsize=256)
def _compiled(policy_json: str) -> tuple[cedarpy.PolicySet, tuple[_Rule, ...]]:
    policy = Policy.model_validate_json(policy_json)
    rules = tuple(_rules(policy))
    return cedarpy.PolicySet.from_str(to_cedar(policy)), rules


_NO_ENTITIES = cedarpy.Entities.from_json_str("[]")


_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def _cedar_value(value: Any) -> Any:
    """An argument as a Cedar value: no floats, nulls or integers beyond 64 bits in
    Cedar (a float or such an integer becomes its text, a null is left out)."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):  # Cedar's integers are 64-bit: a larger one is its text
        return value if _LONG_MIN <= value <= _LONG_MAX else str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _cedar_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_cedar_value(v) for v in value if v is not None]
    return str(value)


def _context(request: DecisionRequest) -> dict[str, Any]:
    args = _cedar_value(request.arguments)
    lengths = {k: len(v) for k, v in request.arguments.items() if isinstance(v, str)}
    return {
        "args": args,
        "lengths": lengths,
        "hosts": sorted(set(request.hosts)),
        **request.counters.model_dump(),
    }


def _entity(request: DecisionRequest) -> str:
    kind = "Agent" if request.principal_kind == "agent" else "User"
    return f"Aether::{kind}::{_string(request.principal)}"


def _ids(policy: Policy, rules: list[_Rule]) -> list[str]:
    return [f"{policy.id}#{r.name}" for r in rules]


def decide(policy: Policy, request: DecisionRequest) -> Decision:
    """Whether ``policy`` lets ``request``'s principal call its tool now (pure).

    Cedar is asked about ``call``; when that is allowed and the policy holds some
    tools for approval, about ``call_unattended`` too (denied: needs approval)."""
    policy_set, rules = _compiled(policy.model_dump_json())
    base = {
        "principal": _entity(request),
        "resource": _tool(request.tool_id),
        "context": _context(request),
    }
    call = cedarpy.is_authorized({**base, "action": _CALL}, policy_set, _NO_ENTITIES)
    by_id = {f"policy{n}": rule for n, rule in enumerate(rules)}
    matched = [by_id[i] for i in call.diagnostics.reasons if i in by_id]
    if call.diagnostics.errors:
        errors = "; ".join(str(e) for e in call.diagnostics.errors)[:500]
        for cedar_id, rule in by_id.items():
            errors = errors.replace(f"`{cedar_id}`", f"{rule.name!r} ({rule.reason})")
        return Decision(False, False, [f"the policy could not be evaluated: {errors}"], [])
    if not call.allowed:
        reasons = [r.reason for r in matched] or [
            f"tool {request.tool_id!r} is not among the tools of policy {policy.id!r}"
        ]
        return Decision(False, False, reasons, _ids(policy, matched))
    if not policy.approval_required:  # no rule forbids calling unattended: skip asking
        return Decision(True, False, [r.reason for r in matched], _ids(policy, matched))
    unattended = cedarpy.is_authorized({**base, "action": _UNATTENDED}, policy_set, _NO_ENTITIES)
    held = [by_id[i] for i in unattended.diagnostics.reasons if i in by_id]
    needs = not unattended.allowed
    decided = matched + held if needs else matched
    return Decision(True, needs, [r.reason for r in decided], _ids(policy, decided))


# -- what is kept of a call, and replaying calls ------------------------------------------

REDACTED = "[redacted]"


def redact_arguments(
    arguments: Mapping[str, Any], names: Iterable[str], secrets: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The arguments as they may be kept: an argument named in ``names`` is replaced, and
    the value of each listed secret known in ``secrets`` is cut out of every string."""
    listed = set(names)
    values = [(n, v) for n, v in (secrets or {}).items() if n in listed and v]

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            for name, secret in values:
                value = value.replace(secret, f"[redacted:{name}]")
            return value
        if isinstance(value, dict):
            return {k: REDACTED if k in listed else clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    cleaned: dict[str, Any] = clean(dict(arguments))
    return cleaned


class RecordedCall(BaseModel):
    """A tool call of a past run and what was decided then."""

    request: DecisionRequest
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Replayed:
    call: RecordedCall
    old: Outcome
    new: Outcome
    reasons: list[str] = field(default_factory=list)  # why the new outcome

    @property
    def changed(self) -> bool:
        return self.old != self.new


def simulate(policy: Policy, calls: Iterable[RecordedCall]) -> list[Replayed]:
    """Each recorded call decided again under ``policy`` (pure): the old and new outcome,
    and the new decision's reasons."""
    replayed = []
    for call in calls:
        decision = decide(policy, call.request)
        replayed.append(Replayed(call, call.outcome, decision.outcome, decision.reasons))
    return replayed

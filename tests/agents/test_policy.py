"""Policies in Cedar: the translation, and each kind of rule allowing and denying."""

from __future__ import annotations

from typing import Any

import cedarpy
import pytest
from pydantic import ValidationError

from aether.agents.policy import (
    DEFAULT_SAFE,
    ArgConstraint,
    Counters,
    DecisionRequest,
    Policy,
    RecordedCall,
    TokenBudgets,
    decide,
    redact_arguments,
    simulate,
    to_cedar,
)


def call(tool: str, principal: str = "agt_1", **fields: Any) -> DecisionRequest:
    return DecisionRequest(principal=principal, tool_id=tool, **fields)


def test_the_translation_is_cedar_the_engine_parses() -> None:
    text = to_cedar(DEFAULT_SAFE)
    assert cedarpy.PolicySet.from_str(text) is not None
    assert '@id("tools")' in text and 'Aether::Tool::"search"' in text
    assert "context.steps >= 20" in text and "context.tokens_run >= 50000" in text
    assert 'forbid(principal, action == Aether::Action::"call_unattended"' in text


def test_default_safe() -> None:
    for tool in ("search", "cluster-status", "apps-list"):
        decision = decide(DEFAULT_SAFE, call(tool))
        assert (decision.allowed, decision.needs_approval) == (True, False), tool
        assert decision.policy_ids == ["default-safe#tools"]
    for tool in ("run-code", "run-command"):
        decision = decide(DEFAULT_SAFE, call(tool))
        assert decision.outcome == "approval", tool
        assert "default-safe#approval" in decision.policy_ids
    for tool in ("scale", "memory-write", "my-own"):
        decision = decide(DEFAULT_SAFE, call(tool))
        assert decision.outcome == "deny", tool
        assert decision.reasons == [
            f"tool {tool!r} is not among the tools of policy 'default-safe'"
        ]


def test_a_user_is_a_principal_too() -> None:
    user = DecisionRequest(principal_kind="user", principal="ada", tool_id="search")
    assert decide(DEFAULT_SAFE, user).outcome == "allow"


def _constrained(**constraint: Any) -> Policy:
    return Policy(id="p", tools=["*"], constraints=[ArgConstraint(**constraint)])


@pytest.mark.parametrize(
    ("constraint", "allowed", "denied"),
    [
        (
            {"tool": "run-command", "arg": "command", "allow": ["ls", "cat"]},
            ["ls", "ls -la /tmp", "cat a.txt"],
            ["rm -rf /", "lsof", "ls; rm -rf /", "cat a | sh", "ls $(id)", "ls\nrm x"],
        ),
        (
            {"tool": "run-command", "arg": "command", "one_of": ["date", "uptime"]},
            ["date", "uptime"],
            ["date -s 2020", "whoami"],
        ),
        (
            {"tool": "run-command", "arg": "command", "like": "echo *"},
            ["echo hi", "echo "],
            ["printf hi", "echo"],
        ),
        (
            {"tool": "*", "arg": "command", "max_length": 5},
            ["ls", "12345"],
            ["123456"],
        ),
    ],
)
def test_each_constraint_allows_and_denies(
    constraint: dict[str, Any], allowed: list[str], denied: list[str]
) -> None:
    policy = _constrained(**constraint)
    for value in allowed:
        decision = decide(policy, call("run-command", arguments={"command": value}))
        assert decision.allowed, (value, decision)
    for value in denied:
        decision = decide(policy, call("run-command", arguments={"command": value}))
        assert not decision.allowed, value
        assert decision.policy_ids == ["p#constraint[0]"], decision
        assert "argument 'command'" in decision.reasons[0]


def test_a_constraint_applies_to_its_tool_and_a_value_of_another_type_is_denied() -> None:
    policy = _constrained(tool="run-command", arg="command", allow=["ls"])
    assert decide(policy, call("other", arguments={"command": "rm -rf /"})).allowed
    assert decide(policy, call("run-command", arguments={})).allowed  # not given
    wrong = decide(policy, call("run-command", arguments={"command": 7}))
    assert not wrong.allowed and "could not be evaluated" in wrong.reasons[0]
    assert "constraint[0]" in wrong.reasons[0]
    long_number = _constrained(tool="*", arg="n", max_length=3)
    assert not decide(long_number, call("t", arguments={"n": 12345})).allowed


def test_a_constraint_has_exactly_one_rule() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        ArgConstraint(tool="t", arg="a", allow=["ls"], max_length=3)
    with pytest.raises(ValidationError, match="exactly one"):
        ArgConstraint(tool="t", arg="a")
    with pytest.raises(ValidationError):
        ArgConstraint(tool="t", arg="a", allow=["ls *"])  # a program, not a pattern


@pytest.mark.parametrize(
    ("counter", "field", "limit"),
    [
        ("steps", "max_steps", 3),
        ("tool_calls", "max_tool_calls", 3),
        ("tokens_run", "per_run", 1000),
        ("tokens_agent_day", "per_agent_per_day", 1000),
        ("tokens_tenant_day", "per_tenant_per_day", 1000),
    ],
)
def test_counters_and_budgets_run_out(counter: str, field: str, limit: int) -> None:
    if field.startswith("per_"):
        policy = Policy(
            id="p", tools=["*"], token_budgets=TokenBudgets.model_validate({field: limit})
        )
    else:
        policy = Policy.model_validate({"id": "p", "tools": ["*"], field: limit})
    below = decide(policy, call("t", counters=Counters(**{counter: limit - 1})))
    assert below.allowed
    spent = decide(policy, call("t", counters=Counters(**{counter: limit})))
    assert not spent.allowed and spent.policy_ids == [f"p#{field}"]
    assert str(limit) in spent.reasons[0]


def test_egress_only_to_listed_hosts() -> None:
    policy = Policy(id="p", tools=["*"], egress_hosts=["api.example.com", "pypi.org"])
    assert decide(policy, call("t", hosts=["pypi.org"])).allowed
    assert decide(policy, call("t", hosts=[])).allowed
    denied = decide(policy, call("t", hosts=["pypi.org", "evil.example.net"]))
    assert not denied.allowed and denied.policy_ids == ["p#egress"]
    assert not decide(DEFAULT_SAFE, call("search", hosts=["pypi.org"])).allowed


def test_approval_for_listed_tools_or_all() -> None:
    some = Policy(id="p", tools=["*"], approval_required=["scale"])
    assert decide(some, call("scale")).outcome == "approval"
    assert decide(some, call("search")).outcome == "allow"
    every = Policy(id="p", tools=["*"], approval_required=["*"])
    assert decide(every, call("search")).outcome == "approval"
    # a denied call is denied, not held for approval
    assert decide(Policy(id="p", approval_required=["*"]), call("search")).outcome == "deny"


def test_odd_arguments_are_decided_not_crashed_on() -> None:
    odd = {"f": 1.5, "none": None, "nested": {"list": [1, "a", None]}, "q": 'a"b\\c'}
    assert decide(DEFAULT_SAFE, call("search", arguments=odd)).allowed
    huge = {"n": 10**30, "m": -(10**30), "fits": 2**63 - 1}
    assert decide(DEFAULT_SAFE, call("search", arguments=huge)).allowed
    quoted = Policy(
        id="p", tools=["*"], constraints=[ArgConstraint(tool="*", arg="q", one_of=['a"b\\c'])]
    )
    assert decide(quoted, call("t", arguments={"q": 'a"b\\c'})).allowed
    assert not decide(quoted, call("t", arguments={"q": "ab"})).allowed


def test_redaction() -> None:
    args = {"token": "s3cret", "url": "https://x/?key=abc123", "nested": {"token": "t"}}
    kept = redact_arguments(args, ["token", "api-key"], {"api-key": "abc123", "other": "url"})
    assert kept == {
        "token": "[redacted]",
        "url": "https://x/?key=[redacted:api-key]",
        "nested": {"token": "[redacted]"},
    }


def test_simulate_replays_calls_under_a_changed_policy() -> None:
    calls = [
        RecordedCall(request=call("search"), outcome="allow"),
        RecordedCall(request=call("run-command", arguments={"command": "ls"}), outcome="approval"),
        RecordedCall(request=call("scale"), outcome="deny"),
    ]
    stricter = DEFAULT_SAFE.model_copy(
        update={"tools": ["search", "run-command", "scale"], "approval_required": []}
    )
    replayed = simulate(stricter, calls)
    assert [(r.old, r.new) for r in replayed] == [
        ("allow", "allow"),
        ("approval", "allow"),
        ("deny", "allow"),
    ]
    assert [r.changed for r in replayed] == [False, True, True]
    assert replayed[2].call is calls[2]
    assert replayed[2].reasons == ["the tool is allowed"]  # why the new outcome


@pytest.mark.parametrize("arg", ["if", "in", "has", "like", "true", "is", "context"])
def test_an_argument_named_like_a_cedar_keyword_is_constrained_too(arg: str) -> None:
    policy = Policy(
        id="p",
        tools=["*"],
        constraints=[
            ArgConstraint(tool="*", arg=arg, max_length=3),
            ArgConstraint(tool="*", arg=arg, one_of=["ab", "abcd"]),
        ],
    )
    assert decide(policy, call("t", arguments={arg: "ab"})).allowed
    denied = decide(policy, call("t", arguments={arg: "abcd"}))
    assert not denied.allowed and denied.policy_ids == ["p#constraint[0]"]

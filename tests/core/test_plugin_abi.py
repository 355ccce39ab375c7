"""The plugin ABI's pure half: inputs, validating answers, folding verdicts in."""

from __future__ import annotations

import json

from aether.core.guardrails import plugin_guards
from aether.core.plugin_abi import (
    GuardVerdict,
    PluginOutcome,
    encode,
    guard_input,
    guard_verdict,
    note_skips,
    parse_guard,
    risk_input,
    risk_rule,
)
from aether.core.risk import Health, Signal, assess, rule_results
from aether.model.decisions import Decision
from aether.model.risk import RiskStatus

NOW = 1_000_000.0


def test_the_guard_input_is_compact_sorted_json() -> None:
    payload = encode(guard_input(3, "drain", "n1", {"draining": True}, "why", None, NOW))
    assert b'"kind":"drain"' in payload and b" " not in payload.replace(b"why", b"")
    assert json.loads(payload) == {
        "abi": 1,
        "kind": "guard",
        "now": NOW,
        "layer": 3,
        "decision": {
            "kind": "drain",
            "target": "n1",
            "action": {"draining": True},
            "reason": "why",
            "tenant": None,
        },
    }


def test_the_risk_input_carries_signals_health_and_the_built_in_results() -> None:
    signals = [Signal(1, "spot_price", 0.1, "aws", NOW - 5)]
    health = Health(memory_fraction=0.5, stale=False)
    results = rule_results(signals, health, NOW)
    data = risk_input("n1", NOW, signals, health, results)
    assert data["signals"] == [{"kind": "spot_price", "value": 0.1, "source": "aws", "ts": NOW - 5}]
    assert data["health"]["memory_fraction"] == 0.5
    assert data["rules"]["market.rebalance"]["status"] == "LOW"


def test_a_plugin_verdict_joins_the_assessment_and_ties_go_to_the_built_in_rules() -> None:
    spike = [Signal(i, "spot_price", 1.0 if i < 7 else 2.0, "aws", NOW - 10 + i) for i in range(10)]
    outcome = PluginOutcome(
        "window", "2", output=b'{"status": "CRITICAL", "root_cause": "Maintenance Window"}'
    )
    rule = risk_rule(outcome)
    assert not isinstance(rule, str)
    tied = assess("n1", spike, None, NOW, plugins=[rule])
    assert (tied.status, tied.rule) == (RiskStatus.CRITICAL, "market.price_trend")
    assert tied.inputs["plugin.window"]["plugin_version"] == "2"
    alone = assess("n1", [], None, NOW, plugins=[rule])
    assert (alone.rule, alone.root_cause) == ("plugin.window", "Maintenance Window")
    skipped = note_skips(assess("n1", [], None, NOW), {"spinner": "out of fuel"})
    assert skipped.status is RiskStatus.LOW
    assert skipped.inputs["plugin.spinner"] == {"skipped": "out of fuel"}


def test_a_failed_or_garbled_evaluation_is_a_skip() -> None:
    assert risk_rule(PluginOutcome("p", "1", error="deadline: x")) == "deadline: x"
    assert guard_verdict(PluginOutcome("p", "1", output=b"{}")).skipped == (
        "garbage: allow: Field required"
    )
    assert parse_guard(b"x" * 70_000) == "garbage: 70000 bytes of output (at most 65536)"


def test_plugin_guards_refuse_on_one_no_and_never_on_a_skip() -> None:
    decision = Decision(layer=1, kind="drain", target="n1", reason="CRITICAL")
    verdicts = [
        GuardVerdict("a", "1", True, "fine"),
        GuardVerdict("b", "2", False, "frozen"),
        GuardVerdict("c", "1", True, skipped="out of fuel"),
    ]
    guarded, refusal = plugin_guards(decision, verdicts)
    assert refusal == "plugin b v2: frozen"
    assert guarded.inputs["plugins"] == {
        "a": "allowed",
        "b": "refused: frozen",
        "c": "skipped: out of fuel",
    }
    only_skips, refusal = plugin_guards(decision, verdicts[2:])
    assert refusal == "" and only_skips.inputs["plugins"] == {"c": "skipped: out of fuel"}
    assert plugin_guards(decision, []) == (decision, "")

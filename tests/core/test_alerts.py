"""The alert state machine (aether.core.alerts): no clocks, no sleeps."""

from __future__ import annotations

import pytest

from aether.core.alerts import (
    DEFAULT_RULES,
    RESOLVED_KEEP,
    AlertState,
    AppWindow,
    Fact,
    Observed,
    QueueLag,
    Revert,
    Rule,
    Runbook,
    Silence,
    backoff,
    fingerprint,
    observe,
    parse_rules,
    step,
)

RULE = Rule("CrashLooping", "crash_loop", 3, for_seconds=10, window=60)
FACT = Fact("CrashLooping", {"app": "web.acme"}, 4.0, "t1")
FP = fingerprint("CrashLooping", {"app": "web.acme"})


def _run(
    facts_at: dict[float, list[Fact]], silences: list[Silence] | None = None
) -> list[tuple[float, dict[str, AlertState], list[str]]]:
    states: dict[str, AlertState] = {}
    out: list[tuple[float, dict[str, AlertState], list[str]]] = []
    for now, facts in sorted(facts_at.items()):
        states, notes = step([RULE], facts, states, silences or [], now)
        out.append((now, states, [str(n.alert.state) for n in notes]))
    return out


def test_pending_then_firing_after_for_then_resolved() -> None:
    run = _run({0: [FACT], 5: [FACT], 10: [FACT], 20: [FACT], 30: []})
    assert [s[FP].state for _, s, _ in run] == [
        "pending",
        "pending",
        "firing",
        "firing",
        "resolved",
    ]
    assert [n for _, _, n in run] == [[], [], ["firing"], [], ["resolved"]]
    last = run[-1][1][FP]
    assert (last.started_at, last.fired_at, last.resolved_at) == (0, 10, 30)
    assert last.tenant == "t1" and last.labels == {"app": "web.acme"}


def test_pending_that_stops_holding_is_dropped_without_notification() -> None:
    run = _run({0: [FACT], 5: [], 6: [FACT]})
    assert run[1][1] == {} and run[1][2] == []
    assert run[2][1][FP].started_at == 6  # starts over


def test_zero_for_fires_at_once() -> None:
    rule = Rule("R", "node_lost", 0, for_seconds=0)
    states, notes = step([rule], [Fact("R", {"node": "n1"}, 1.0)], {}, [], 100)
    assert [a.state for a in states.values()] == ["firing"]
    assert len(notes) == 1


def test_resolved_is_kept_then_dropped_and_refires_as_pending() -> None:
    run = _run({0: [FACT], 10: [FACT], 11: [], 11 + RESOLVED_KEEP - 1: [], 11 + RESOLVED_KEEP: []})
    assert run[2][1][FP].state == "resolved"
    assert run[3][1][FP].state == "resolved"
    assert run[4][1] == {}
    again = _run({0: [FACT], 10: [FACT], 11: [], 12: [FACT]})
    assert again[3][1][FP].state == "pending" and again[3][1][FP].started_at == 12


def test_silence_mutes_notifications_not_states() -> None:
    silence = Silence("s1", {"alertname": "CrashLooping", "app": "web.acme"}, ends_at=25)
    run = _run({0: [FACT], 10: [FACT], 20: [FACT], 30: []}, [silence])
    assert [s[FP].state for _, s, _ in run] == ["pending", "firing", "firing", "resolved"]
    assert [s[FP].silenced for _, s, _ in run] == [True, True, True, False]
    assert [n for _, _, n in run] == [[], [], [], ["resolved"]]  # the silence ended at 25


def test_silence_matchers_and_tenant() -> None:
    other = Silence("s", {"app": "other"}, ends_at=100)
    wrong_tenant = Silence("s", {"alertname": "CrashLooping"}, ends_at=100, tenant="t2")
    future = Silence("s", {}, starts_at=50, ends_at=100)
    for silence in (other, wrong_tenant, future):
        run = _run({0: [FACT], 10: [FACT]}, [silence])
        assert run[1][2] == ["firing"]


def test_unknown_rule_facts_are_ignored() -> None:
    states, notes = step([RULE], [Fact("Nope", {}, 1.0)], {}, [], 0)
    assert states == {} and notes == []


def _app(restarts: list[int], calls: float = 10, errors: float = 0, ms: float = 5) -> AppWindow:
    n = len(restarts)
    return AppWindow(
        "t1",
        ts=[float(i) for i in range(n)],
        calls_per_s=[calls] * n,
        errors_per_s=[errors] * n,
        latency_ms=[ms] * n,
        restarts=restarts,
    )


def test_observe_defaults() -> None:
    seen = Observed(
        apps={
            "loop": _app([0, 1, 2, 3, 0, 1]),  # 3 + 1 restarts (an instance replaced)
            "errs": _app([0] * 10, calls=8, errors=0.125),  # 1.5625 % errors
            "slow": _app([0] * 10, ms=4000),
            "fine": _app([0] * 10),
        },
        disk_free={"n1": 0.10, "n2": 0.5},
        lost_nodes=["n3"],
        certificates={"cluster-ca": 86400.0, "api-tls": 30 * 86400.0},
        queues=[QueueLag("acme", "default", 900.0, 3), QueueLag("acme", "fast", 10.0, 50)],
        reverts=[Revert("web.acme", "acme", at=5.0)],
    )
    facts = observe(DEFAULT_RULES, seen, now=9.5)
    got = {(f.rule, tuple(f.labels.values())): f.value for f in facts}
    assert got == {
        ("HighErrorRate", ("errs",)): 0.015625,
        ("HighLatency", ("slow",)): 4000.0,
        ("CrashLooping", ("loop",)): 4.0,
        ("DiskFree", ("n1",)): 0.10,
        ("NodeLost", ("n3",)): 1.0,
        ("CertificateExpiry", ("cluster-ca",)): 86400.0,
        ("TaskQueueLag", ("acme", "default")): 900.0,
        ("RolloutReverted", ("web.acme",)): 1.0,
    }
    assert all(f.tenant == "t1" for f in facts if "app" in f.labels and f.rule != "RolloutReverted")
    assert all(f.tenant == "acme" for f in facts if f.rule in ("TaskQueueLag", "RolloutReverted"))
    assert all(f.tenant is None for f in facts if "node" in f.labels or "certificate" in f.labels)


def test_certificate_expiry_names_the_earliest_certificate() -> None:
    rule = Rule("Cert", "cert_expiry", 14 * 86400.0)
    soon = {"cluster-ca": 20 * 86400.0, "api-tls": 3 * 86400.0}
    [fact] = observe([rule], Observed(certificates=soon), now=0)
    assert fact.labels == {"certificate": "api-tls"} and fact.value == 3 * 86400.0
    later = {"cluster-ca": 20 * 86400.0, "api-tls": 15 * 86400.0}
    assert observe([rule], Observed(certificates=later), now=0) == []
    assert observe([rule], Observed(), now=0) == []  # nothing known: nothing to say


def test_queue_lag_holds_per_tenant_queue_over_the_threshold() -> None:
    rule = Rule("Lag", "queue_lag", 300.0, for_seconds=60)
    queues = [
        QueueLag("acme", "default", 301.0, 1),
        QueueLag("acme", "batch", 300.0, 9),  # not over
        QueueLag("globex", "default", 5000.0, 2),
    ]
    facts = observe([rule], Observed(queues=queues), now=0)
    assert [(f.labels, f.tenant) for f in facts] == [
        ({"tenant": "acme", "queue": "default"}, "acme"),
        ({"tenant": "globex", "queue": "default"}, "globex"),
    ]
    # it fires after its for-duration and resolves once the queue is claimed again
    fp = fingerprint("Lag", {"tenant": "acme", "queue": "default"})
    states, _ = step([rule], facts[:1], {}, [], 0)
    states, notes = step([rule], facts[:1], states, [], 60)
    assert states[fp].state == "firing" and [n.alert.state for n in notes] == ["firing"]
    states, notes = step([rule], [], states, [], 70)
    assert states[fp].state == "resolved" and [n.alert.state for n in notes] == ["resolved"]


def test_rollout_reverted_counts_the_window_s_reverts_per_app() -> None:
    rule = Rule("Reverted", "rollout_reverted", 1, window=600)
    reverts = [
        Revert("web.acme", "acme", at=100.0),
        Revert("web.acme", "acme", at=500.0),
        Revert("api", "default", at=10.0),  # out of the window at 700
    ]
    facts = observe([rule], Observed(reverts=reverts), now=700)
    assert [(f.labels, f.value, f.tenant) for f in facts] == [({"app": "web.acme"}, 2.0, "acme")]
    assert observe([rule], Observed(reverts=reverts), now=1200) == []  # resolves later
    twice = Rule("Reverted", "rollout_reverted", 2, window=600)
    assert observe([twice], Observed(reverts=reverts[2:]), now=20) == []


def test_observe_window_excludes_old_samples() -> None:
    rule = Rule("C", "crash_loop", 1, window=3)
    assert observe([rule], Observed(apps={"a": _app([0, 5, 5, 5, 5])}), now=4.0) == []
    assert len(observe([rule], Observed(apps={"a": _app([0, 5, 5, 5, 6])}), now=4.0)) == 1


def test_backoff_is_exponential_and_capped() -> None:
    assert [backoff(i, 0.5, 4) for i in range(1, 7)] == [0.5, 1, 2, 4, 4, 4]


def test_parse_rules_replaces_adds_and_drops() -> None:
    rules = parse_rules(
        [
            {"name": "CrashLooping", "kind": "crash_loop", "threshold": 1, "for_seconds": 2},
            {"name": "NodeLost", "disabled": True},
            {
                "name": "Mine",
                "kind": "error_rate",
                "threshold": 0.5,
                "runbook": {"sandbox_id": "s1", "command": "sh", "args": ["-c", "echo hi"]},
            },
        ]
    )
    by = {r.name: r for r in rules}
    assert by["CrashLooping"].for_seconds == 2 and by["CrashLooping"].threshold == 1
    assert "NodeLost" not in by
    assert by["Mine"].runbook == Runbook("s1", "sh", ("-c", "echo hi"), "default")


def test_parse_rules_refuses_garbage() -> None:
    bad: list[object] = [
        {},
        [1],
        [{"name": "x", "kind": "nope"}],
        [{"name": "x", "kind": "crash_loop", "bad": 1}],
    ]
    for raw in bad:
        with pytest.raises(ValueError):
            parse_rules(raw)

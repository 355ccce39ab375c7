"""Alert rules, pure: observed figures + previous states + silences + now -> new states.

Prometheus/Alertmanager conventions. A rule's condition holds for a set of labels
(an app, a node): the alert is ``pending``; once it has held for the rule's
``for_seconds`` it is ``firing`` (a notification); when it stops holding a firing
alert is ``resolved`` (a notification) and a pending one is dropped. A resolved
alert is kept ``RESOLVED_KEEP`` seconds, then dropped; if the condition holds again
it starts over as pending. An alert is identified by its rule and labels (its
``fingerprint``): notifications are grouped by rule+labels.

A silence (matchers ``{label: value}``, ``alertname`` being the rule, and an end
time) mutes the notifications of every alert it matches until it ends; the alert
still changes state and says ``silenced``.

Notifier retries: ``backoff(attempt)`` is the wait before retry ``attempt``
(exponential, capped); at most ``MAX_ATTEMPTS`` attempts per notification.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

__all__ = [
    "DEFAULT_RULES",
    "MAX_ATTEMPTS",
    "RESOLVED_KEEP",
    "AlertState",
    "AppWindow",
    "Fact",
    "Notification",
    "Observed",
    "QueueLag",
    "Revert",
    "Rule",
    "Runbook",
    "Silence",
    "backoff",
    "fingerprint",
    "matches",
    "observe",
    "parse_rules",
    "step",
]

State = Literal["pending", "firing", "resolved"]
RESOLVED_KEEP = 3600.0
MAX_ATTEMPTS = 6
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0

# the conditions the leader can evaluate
Kind = Literal[
    "error_rate",  # app: 5xx / calls over the window > threshold (a fraction)
    "latency_p95",  # app: p95 of the per-second mean latency over the window > threshold (ms)
    "crash_loop",  # app: restarts within the window >= threshold
    "disk_free",  # node: free disk fraction < threshold
    "node_lost",  # node: a known node with no live lease
    "cert_expiry",  # cluster: seconds until the earliest certificate expires < threshold
    "queue_lag",  # tenant queue: seconds its oldest ready task has waited > threshold
    "rollout_reverted",  # app: rollouts reverted automatically within the window >= threshold
]

KINDS: tuple[str, ...] = (
    "error_rate",
    "latency_p95",
    "crash_loop",
    "disk_free",
    "node_lost",
    "cert_expiry",
    "queue_lag",
    "rollout_reverted",
)


@dataclass(frozen=True)
class Runbook:
    """A command run in a sandbox (a ``vm:execute`` task) when an alert of the rule fires;
    the alert's labels reach it as ``ALERT_*`` environment variables."""

    sandbox_id: str
    command: str
    args: tuple[str, ...] = ()
    tenant: str = "default"  # whose sandbox it is (an app alert's runbook runs as its tenant)


@dataclass(frozen=True)
class Rule:
    name: str
    kind: Kind
    threshold: float
    for_seconds: float = 0.0
    window: float = 300.0
    severity: str = "warning"
    runbook: Runbook | None = None  # run as a task when the alert fires


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("HighErrorRate", "error_rate", 0.001, for_seconds=300, window=300, severity="critical"),
    Rule("HighLatency", "latency_p95", 3000.0, for_seconds=300, window=300),
    Rule("CrashLooping", "crash_loop", 3, for_seconds=60, window=300, severity="critical"),
    Rule("DiskFree", "disk_free", 0.15, for_seconds=300),
    Rule("NodeLost", "node_lost", 0, for_seconds=60, severity="critical"),
    Rule("CertificateExpiry", "cert_expiry", 14 * 86400.0, for_seconds=0),
    Rule("TaskQueueLag", "queue_lag", 300.0, for_seconds=120),
    Rule("RolloutReverted", "rollout_reverted", 1, for_seconds=0, window=3600),
)


@dataclass(frozen=True)
class AppWindow:
    """One app's per-second figures over the longest window (oldest first)."""

    tenant: str | None
    ts: Sequence[float]
    calls_per_s: Sequence[float]
    errors_per_s: Sequence[float]
    latency_ms: Sequence[float]
    restarts: Sequence[int]


@dataclass(frozen=True)
class QueueLag:
    """A tenant's task queue: how long its oldest ready task has waited, how many are ready."""

    tenant: str  # the tenant's name
    queue: str
    oldest_wait: float  # seconds
    ready: int


@dataclass(frozen=True)
class Revert:
    """A rollout the leader reverted automatically (``auto_revert``)."""

    app: str  # the app's cluster name
    tenant: str  # the tenant's name
    at: float


@dataclass(frozen=True)
class Observed:
    """What the leader sees in one pass."""

    apps: Mapping[str, AppWindow] = field(default_factory=dict)  # cluster app name ->
    disk_free: Mapping[str, float] = field(default_factory=dict)  # node -> free fraction
    lost_nodes: Sequence[str] = ()
    certificates: Mapping[str, float] = field(default_factory=dict)  # name -> seconds left
    queues: Sequence[QueueLag] = ()
    reverts: Sequence[Revert] = ()


@dataclass(frozen=True)
class Fact:
    """A rule's condition holds for these labels now."""

    rule: str
    labels: Mapping[str, str]
    value: float
    tenant: str | None = None  # None: a cluster alert


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else 0.0


def _within(app: AppWindow, window: float, now: float) -> range:
    start = next((i for i, t in enumerate(app.ts) if t >= now - window), len(app.ts))
    return range(start, len(app.ts))


def _app_value(rule: Rule, app: AppWindow, now: float) -> float | None:
    idx = _within(app, rule.window, now)
    if not idx:
        return None
    if rule.kind == "error_rate":
        calls = sum(app.calls_per_s[i] for i in idx)
        errors = sum(app.errors_per_s[i] for i in idx)
        rate = errors / calls if calls > 0 else 0.0
        return rate if rate > rule.threshold else None
    if rule.kind == "latency_p95":
        p95 = _p95([app.latency_ms[i] for i in idx if app.calls_per_s[i] > 0])
        return p95 if p95 > rule.threshold else None
    # crash_loop: restart counters rise (a counter that drops: a new instance, count from it)
    restarts = 0
    for a, b in itertools.pairwise(idx):
        restarts += max(0, app.restarts[b] - app.restarts[a])
    return float(restarts) if restarts >= max(1.0, rule.threshold) else None


def observe(rules: Iterable[Rule], seen: Observed, now: float) -> list[Fact]:
    """The facts: for each rule, the labels its condition holds for now."""
    facts: list[Fact] = []
    for rule in rules:
        if rule.kind in ("error_rate", "latency_p95", "crash_loop"):
            for name, app in sorted(seen.apps.items()):
                value = _app_value(rule, app, now)
                if value is not None:
                    facts.append(Fact(rule.name, {"app": name}, value, app.tenant))
        elif rule.kind == "disk_free":
            for node, free in sorted(seen.disk_free.items()):
                if free < rule.threshold:
                    facts.append(Fact(rule.name, {"node": node}, free))
        elif rule.kind == "node_lost":
            facts.extend(Fact(rule.name, {"node": node}, 1.0) for node in sorted(seen.lost_nodes))
        elif rule.kind == "cert_expiry" and seen.certificates:
            name, left = min(seen.certificates.items(), key=lambda item: (item[1], item[0]))
            if left < rule.threshold:  # the earliest to expire, named
                facts.append(Fact(rule.name, {"certificate": name}, left))
        elif rule.kind == "queue_lag":
            for q in sorted(seen.queues, key=lambda q: (q.tenant, q.queue)):
                if q.ready > 0 and q.oldest_wait > rule.threshold:
                    labels = {"tenant": q.tenant, "queue": q.queue}
                    facts.append(Fact(rule.name, labels, q.oldest_wait, q.tenant))
        elif rule.kind == "rollout_reverted":
            facts.extend(_reverted(rule, seen.reverts, now))
    return facts


def _reverted(rule: Rule, reverts: Sequence[Revert], now: float) -> list[Fact]:
    """Per app, the automatic reverts within the window, when at least ``threshold``."""
    by_app: dict[str, list[Revert]] = {}
    for revert in reverts:
        if now - rule.window <= revert.at <= now:
            by_app.setdefault(revert.app, []).append(revert)
    facts = []
    for app, seen in sorted(by_app.items()):
        if len(seen) >= max(1.0, rule.threshold):
            facts.append(Fact(rule.name, {"app": app}, float(len(seen)), seen[0].tenant))
    return facts


def fingerprint(rule: str, labels: Mapping[str, str]) -> str:
    blob = json.dumps([rule, sorted(labels.items())], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: Mapping[str, str]  # label -> value; "alertname" is the rule
    ends_at: float
    starts_at: float = 0.0
    tenant: str | None = None  # None: a cluster admin's (matches any alert)


@dataclass(frozen=True)
class AlertState:
    fingerprint: str
    rule: str
    labels: Mapping[str, str]
    tenant: str | None
    state: State
    value: float
    started_at: float  # the condition has held since
    updated_at: float
    fired_at: float | None = None
    resolved_at: float | None = None
    silenced: bool = False
    severity: str = "warning"


@dataclass(frozen=True)
class Notification:
    alert: AlertState  # its state is "firing" or "resolved"


def matches(silence: Silence, alert: AlertState, now: float) -> bool:
    """True when ``silence`` is active at ``now`` and mutes ``alert``."""
    if not silence.starts_at <= now < silence.ends_at:
        return False
    if silence.tenant is not None and silence.tenant != alert.tenant:
        return False
    labels = {"alertname": alert.rule, **alert.labels}
    return all(labels.get(k) == v for k, v in silence.matchers.items())


def step(
    rules: Sequence[Rule],
    facts: Iterable[Fact],
    previous: Mapping[str, AlertState],
    silences: Sequence[Silence],
    now: float,
) -> tuple[dict[str, AlertState], list[Notification]]:
    """The new states by fingerprint, and the notifications to send (unsilenced only)."""
    by_name = {r.name: r for r in rules}
    current: dict[str, AlertState] = {}
    notes: list[Notification] = []
    held: set[str] = set()
    for fact in facts:
        rule = by_name.get(fact.rule)
        if rule is None:
            continue
        fp = fingerprint(fact.rule, fact.labels)
        held.add(fp)
        old = previous.get(fp)
        if old is None or old.state == "resolved":
            alert = AlertState(
                fp,
                rule.name,
                dict(fact.labels),
                fact.tenant,
                "pending",
                fact.value,
                started_at=now,
                updated_at=now,
                severity=rule.severity,
            )
        else:
            alert = replace(old, value=fact.value, updated_at=now, severity=rule.severity)
        if alert.state == "pending" and now - alert.started_at >= rule.for_seconds:
            alert = replace(alert, state="firing", fired_at=now)
        alert = replace(alert, silenced=any(matches(s, alert, now) for s in silences))
        if alert.state == "firing" and alert.fired_at == now and not alert.silenced:
            notes.append(Notification(alert))
        current[fp] = alert
    for fp, old in previous.items():
        if fp in held:
            continue
        if old.state == "firing":
            alert = replace(old, state="resolved", resolved_at=now, updated_at=now)
            alert = replace(alert, silenced=any(matches(s, alert, now) for s in silences))
            current[fp] = alert
            if not alert.silenced:
                notes.append(Notification(alert))
        elif old.state == "resolved" and now - (old.resolved_at or now) < RESOLVED_KEEP:
            current[fp] = old
        # pending and no longer holding: dropped
    return current, notes


_RULE_KEYS = {"name", "kind", "threshold", "for_seconds", "window", "severity", "runbook"}


def parse_rules(raw: object, base: Sequence[Rule] = DEFAULT_RULES) -> list[Rule]:
    """``base`` with the rules of ``raw`` (a JSON list of objects) replacing those of
    their name or added; ``{"name": N, "disabled": true}`` drops rule N. ValueError
    says what is wrong."""
    if not isinstance(raw, list):
        raise ValueError("alert rules: a JSON list of rules")
    rules = {r.name: r for r in base}
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError(f"alert rules[{i}]: an object with a name")
        name = item["name"]
        if item.get("disabled") is True:
            rules.pop(name, None)
            continue
        unknown = set(item) - _RULE_KEYS
        if unknown:
            raise ValueError(f"alert rules[{i}]: unknown keys {sorted(unknown)}")
        if item.get("kind") not in KINDS:
            raise ValueError(f"alert rules[{i}]: kind is one of {', '.join(KINDS)}")
        book = item.get("runbook")
        try:
            runbook = (
                Runbook(
                    sandbox_id=str(book["sandbox_id"]),
                    command=str(book["command"]),
                    args=tuple(str(a) for a in book.get("args", [])),
                    tenant=str(book.get("tenant", "default")),
                )
                if isinstance(book, dict)
                else None
            )
            rules[name] = Rule(
                name,
                item["kind"],
                float(item.get("threshold", 0)),
                for_seconds=float(item.get("for_seconds", 0)),
                window=float(item.get("window", 300)),
                severity=str(item.get("severity", "warning")),
                runbook=runbook,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"alert rules[{i}]: {exc}") from None
    return list(rules.values())


def backoff(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait before attempt ``attempt`` (1 is the first retry)."""
    return float(min(cap, base * 2.0 ** max(0, attempt - 1)))

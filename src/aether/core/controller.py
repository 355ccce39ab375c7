"""Layer 1 of the controller: a decision tree over a plain snapshot, evaluated every second.

``evaluate(snapshot, policy)`` returns the decisions to apply, safety first:

1. **drain** every node whose latest (fresh) risk assessment is CRITICAL and
   that is not draining yet - unless it is the last schedulable node, in which
   case the decision comes back with a ``refusal`` (nothing could take its
   instances); the scheduler then moves the instances off the draining node;
2. **undrain** a node the controller itself drained once it has been LOW for
   ``policy.undrain_after`` seconds (hysteresis); nodes an operator or an
   adviser drained are left alone;
3. **scale** each app with an ``[autoscale]`` spec (see :mod:`aether.core.autoscale`);
   apps in the middle of a rollout are left alone.

Pure: no I/O, no clock (``snapshot.now``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aether.core.autoscale import decide
from aether.model.decisions import AutoscaleSpec, Decision
from aether.model.risk import RiskAssessment, RiskStatus

__all__ = [
    "DRAINED_BY_ADVISER",
    "DRAINED_BY_CONTROLLER",
    "DRAINED_BY_OPERATOR",
    "AppState",
    "ControllerPolicy",
    "ControllerSnapshot",
    "NodeState",
    "evaluate",
    "track_low_since",
]

DRAINED_BY_CONTROLLER = "controller"  # layer 1: undrained by layer 1 when LOW again
DRAINED_BY_ADVISER = "adviser"  # layers 2 and 3: undrained by an adviser or an operator
DRAINED_BY_OPERATOR = "operator"  # by hand: only an operator undrains it


@dataclass(frozen=True)
class AppState:
    """One app as the controller sees it: its blueprint and its recent figures."""

    app: str
    instances: int  # the blueprint's desired count
    autoscale: AutoscaleSpec | None = None
    series: tuple[tuple[float, float], ...] = ()  # (ts, metric per instance), oldest first
    reporting: int | None = None  # instances reporting figures in the latest sample
    rolling_out: bool = False
    last_up: float | None = None
    last_down: float | None = None
    tenant: str | None = None


@dataclass(frozen=True)
class NodeState:
    """One live node: its drain flag, who set it, and its latest risk assessment."""

    node: str
    draining: bool = False
    drained_by: str = ""
    risk: RiskAssessment | None = None
    low_since: float | None = None  # since when its risk has been LOW without a break


@dataclass(frozen=True)
class ControllerSnapshot:
    now: float
    apps: Sequence[AppState] = ()
    nodes: Sequence[NodeState] = ()


@dataclass(frozen=True)
class ControllerPolicy:
    undrain_after: float = 30.0  # seconds LOW before the controller undrains its own drain
    risk_max_age: float = 15.0  # older assessments are not acted on


def _fresh(risk: RiskAssessment | None, now: float, policy: ControllerPolicy) -> bool:
    return risk is not None and now - risk.ts <= policy.risk_max_age


def track_low_since(
    previous: Mapping[str, float],
    assessments: Mapping[str, RiskAssessment],
    now: float,
    max_age: float = ControllerPolicy.risk_max_age,
) -> dict[str, float]:
    """Since when each node has been LOW without a break (fresh assessments only)."""
    out: dict[str, float] = {}
    for node, risk in assessments.items():
        if risk.status is RiskStatus.LOW and now - risk.ts <= max_age:
            out[node] = previous.get(node, now)
    return out


def _drains(snapshot: ControllerSnapshot, policy: ControllerPolicy) -> list[Decision]:
    now = snapshot.now
    schedulable = sum(1 for n in snapshot.nodes if not n.draining)
    critical = sorted(
        (
            n
            for n in snapshot.nodes
            if not n.draining
            and _fresh(n.risk, now, policy)
            and n.risk is not None
            and n.risk.status is RiskStatus.CRITICAL
        ),
        key=lambda n: (-(n.risk.confidence if n.risk else 0.0), n.node),
    )
    out = []
    for node in critical:
        risk = node.risk
        assert risk is not None
        inputs = {
            "status": risk.status.value,
            "confidence": risk.confidence,
            "root_cause": risk.root_cause,
            "rule": risk.rule,
            "risk_inputs": risk.inputs,
            "assessed_at": risk.ts,
            "schedulable_nodes": schedulable,
        }
        reason = (
            f"node {node.node} is CRITICAL: {risk.root_cause} "
            f"(confidence {risk.confidence:.2f}, rule {risk.rule})"
        )
        if schedulable <= 1:
            out.append(
                Decision(
                    layer=1,
                    kind="drain",
                    target=node.node,
                    action={"draining": True},
                    inputs=inputs,
                    reason=reason,
                    refusal="it is the last schedulable node: nothing could take its instances",
                )
            )
            continue
        schedulable -= 1
        out.append(
            Decision(
                layer=1,
                kind="drain",
                target=node.node,
                action={"draining": True, "drained_by": DRAINED_BY_CONTROLLER},
                inputs=inputs,
                reason=f"{reason}; draining it so its instances move to other nodes",
            )
        )
    return out


def _undrains(snapshot: ControllerSnapshot, policy: ControllerPolicy) -> list[Decision]:
    now = snapshot.now
    out = []
    for node in sorted(snapshot.nodes, key=lambda n: n.node):
        risk = node.risk
        if (
            not node.draining
            or node.drained_by != DRAINED_BY_CONTROLLER
            or risk is None
            or not _fresh(risk, now, policy)
            or risk.status is not RiskStatus.LOW
            or node.low_since is None
        ):
            continue
        low_for = now - node.low_since
        if low_for < policy.undrain_after:
            continue
        out.append(
            Decision(
                layer=1,
                kind="undrain",
                target=node.node,
                action={"draining": False},
                inputs={
                    "status": risk.status.value,
                    "confidence": risk.confidence,
                    "root_cause": risk.root_cause,
                    "low_for": round(low_for, 1),
                    "undrain_after": policy.undrain_after,
                },
                reason=(
                    f"node {node.node} has been LOW ({risk.root_cause}) for {low_for:.0f} s "
                    f"(>= {policy.undrain_after:g} s): undoing the controller's drain"
                ),
            )
        )
    return out


def _scales(snapshot: ControllerSnapshot) -> list[Decision]:
    out = []
    for app in sorted(snapshot.apps, key=lambda a: a.app):
        if app.autoscale is None or app.rolling_out:
            continue
        result = decide(
            app.autoscale,
            app.instances,
            app.series,
            app.last_up,
            app.last_down,
            snapshot.now,
            reporting=app.reporting,
        )
        if result is None:
            continue
        out.append(
            Decision(
                layer=1,
                kind="scale",
                target=app.app,
                action={
                    "instances": result.desired,
                    "from": result.current,
                    "direction": result.direction,
                },
                inputs=result.inputs,
                reason=result.reason,
                tenant=app.tenant,
            )
        )
    return out


def evaluate(
    snapshot: ControllerSnapshot, policy: ControllerPolicy | None = None
) -> list[Decision]:
    """Layer 1's decisions for this snapshot: drains, then undrains, then scaling."""
    policy = policy or ControllerPolicy()
    return [*_drains(snapshot, policy), *_undrains(snapshot, policy), *_scales(snapshot)]

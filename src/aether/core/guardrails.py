"""Guardrails: what an adviser (layer 2 or 3) proposes is checked here before anything runs.

A proposal is accepted only if it is

- **allowed for its layer** - layer 2 (tactical) scales apps, layer 3
  (strategic) drains and undrains nodes;
- **a valid blueprint change** - the app or node exists, ``instances`` is a
  whole number >= 0;
- **within bounds** - the app's ``[autoscale]`` min..max, or 1..``max_instances``
  for an app without one; never the last schedulable node drained; never a
  node an operator drained undrained, nor a CRITICAL one;
- **a modest rate of change** - at most ``max_step_up``/``max_step_down``
  instances (the spec's, or ``max_step``) per decision, at least
  ``min_interval`` seconds since the app last changed, at most
  ``max_drains`` nodes drained per round.

``check_all`` judges a round of proposals in order, counting the accepted ones
(a drain lowers the schedulable nodes the next proposal sees). Pure: no I/O,
no clock.

Then the cluster's **guard plugins** (WebAssembly, :mod:`aether.core.plugin_abi`)
judge every decision the controller is about to apply, of any layer:
:func:`plugin_guards` folds their verdicts in -- any ``allow: false`` refuses
it with the plugin's name and reason; a plugin that failed is skipped, its
reason kept in the decision's ``inputs["plugins"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aether.core.controller import DRAINED_BY_ADVISER, DRAINED_BY_OPERATOR
from aether.core.plugin_abi import GuardVerdict
from aether.model.decisions import AutoscaleSpec, Decision, DecisionKind, Proposal
from aether.model.risk import RiskStatus

__all__ = [
    "LAYER_KINDS",
    "AppLimits",
    "GuardrailView",
    "NodeLimits",
    "Verdict",
    "check",
    "check_all",
    "plugin_guards",
]

LAYER_KINDS: dict[int, frozenset[str]] = {
    2: frozenset({"scale"}),
    3: frozenset({"drain", "undrain"}),
}

_KINDS: dict[str, DecisionKind] = {"scale": "scale", "drain": "drain", "undrain": "undrain"}


@dataclass(frozen=True)
class AppLimits:
    app: str
    instances: int
    autoscale: AutoscaleSpec | None = None
    rolling_out: bool = False
    last_change: float | None = None  # when its instance count last changed (any layer)
    tenant: str | None = None


@dataclass(frozen=True)
class NodeLimits:
    node: str
    draining: bool = False
    drained_by: str = ""
    status: RiskStatus | None = None


@dataclass(frozen=True)
class GuardrailView:
    now: float
    apps: Mapping[str, AppLimits] = field(default_factory=dict)
    nodes: Mapping[str, NodeLimits] = field(default_factory=dict)  # live nodes only
    max_instances: int = 100  # cap for apps without [autoscale]
    max_step: int = 4  # instances per decision for apps without [autoscale]
    min_interval: float = 10.0  # seconds between two changes of one app
    max_drains: int = 1  # nodes an adviser may drain per round


@dataclass(frozen=True)
class Verdict:
    """The judgement on one proposal; ``decision`` is what gets recorded (and applied)."""

    decision: Decision
    accepted: bool
    reasons: tuple[str, ...] = ()  # why it was refused
    noop: bool = False  # it asks for what already is

    @property
    def detail(self) -> str:
        return "; ".join(self.reasons)


def _as_count(value: Any) -> int | None:
    """A whole number of instances, or None (bools, fractions, text are not counts)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _text(value: Any, limit: int = 500) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _scale(
    proposal: Proposal, view: GuardrailView, reasons: list[str]
) -> tuple[dict[str, Any], bool]:
    app = view.apps.get(proposal.target) if isinstance(proposal.target, str) else None
    count = _as_count(proposal.instances)
    if app is None:
        reasons.append(f"no app named {proposal.target!r} has a live deployment")
    if count is None:
        reasons.append(f"instances must be a whole number, not {proposal.instances!r}")
    elif count < 0:
        reasons.append(f"instances must be >= 0, not {count}")
    if app is None or count is None or count < 0:
        return {"instances": count}, False
    action: dict[str, Any] = {"instances": count, "from": app.instances}
    if count == app.instances:
        return action, True
    spec = app.autoscale
    low, high = (spec.min, spec.max) if spec else (min(1, app.instances), view.max_instances)
    where = "its [autoscale] bounds" if spec else "the cluster's bounds"
    if not low <= count <= high:
        reasons.append(f"{count} instances is outside {where} [{low}, {high}]")
    step_up = spec.max_step_up if spec else view.max_step
    step_down = spec.max_step_down if spec else view.max_step
    if count > app.instances + step_up:
        reasons.append(f"+{count - app.instances} instances in one step; at most +{step_up}")
    if count < app.instances - step_down:
        reasons.append(f"-{app.instances - count} instances in one step; at most -{step_down}")
    if app.last_change is not None and view.now - app.last_change < view.min_interval:
        reasons.append(
            f"{app.app} changed {view.now - app.last_change:.0f} s ago; "
            f"at most one change per {view.min_interval:g} s"
        )
    if app.rolling_out:
        reasons.append(f"{app.app} is in the middle of a rollout")
    action["direction"] = "up" if count > app.instances else "down"
    return action, False


def _node(
    proposal: Proposal, view: GuardrailView, drains_so_far: int, reasons: list[str]
) -> tuple[dict[str, Any], bool]:
    node = view.nodes.get(proposal.target) if isinstance(proposal.target, str) else None
    if node is None:
        reasons.append(f"no live node named {proposal.target!r}")
        return {}, False
    if proposal.kind == "drain":
        if node.draining:
            return {"draining": True}, True
        schedulable = sum(1 for n in view.nodes.values() if not n.draining)
        if schedulable <= 1:
            reasons.append(f"{node.node} is the last schedulable node; never drain it")
        if drains_so_far >= view.max_drains:
            reasons.append(f"at most {view.max_drains} node drain(s) per round")
        return {"draining": True, "drained_by": DRAINED_BY_ADVISER}, False
    if not node.draining:
        return {"draining": False}, True
    if node.drained_by in ("", DRAINED_BY_OPERATOR):
        reasons.append(f"{node.node} was drained by an operator; only an operator undrains it")
    if node.status is RiskStatus.CRITICAL:
        reasons.append(f"{node.node} is still CRITICAL")
    return {"draining": False}, False


def check(
    proposal: Proposal, layer: int, view: GuardrailView, *, drains_so_far: int = 0
) -> Verdict:
    """Judge one proposal of ``layer`` against ``view``."""
    reasons: list[str] = []
    kind = proposal.kind if isinstance(proposal.kind, str) else ""
    target = proposal.target if isinstance(proposal.target, str) else repr(proposal.target)
    reason = _text(proposal.reason) or "(the adviser gave no reason)"
    allowed = LAYER_KINDS.get(layer, frozenset())
    action: dict[str, Any] = {}
    noop = False
    if kind not in allowed:
        reasons.append(
            f"layer {layer} may propose only {', '.join(sorted(allowed)) or 'nothing'}, "
            f"not {proposal.kind!r}"
        )
    elif kind == "scale":
        action, noop = _scale(proposal, view, reasons)
    else:
        action, noop = _node(proposal, view, drains_so_far, reasons)
    if noop:
        reasons = ["no change: it is already so"]
    app = view.apps.get(target) if kind == "scale" else None
    decision = Decision(
        layer=layer,
        kind=_KINDS.get(kind, "advice"),
        target=target[:128],
        action=action,
        inputs={"proposal": proposal.model_dump(mode="json")},
        reason=reason,
        tenant=app.tenant if app else None,
    )
    return Verdict(decision, accepted=not reasons, reasons=tuple(reasons), noop=noop)


def check_all(proposals: Sequence[Proposal], layer: int, view: GuardrailView) -> list[Verdict]:
    """Judge a round in order; accepted changes are visible to the proposals after them."""
    out = []
    drains = 0
    apps = dict(view.apps)
    nodes = dict(view.nodes)
    for proposal in proposals:
        current = replace(view, apps=apps, nodes=nodes)
        verdict = check(proposal, layer, current, drains_so_far=drains)
        out.append(verdict)
        if not verdict.accepted:
            continue
        d = verdict.decision
        if d.kind == "scale":
            apps[d.target] = replace(
                apps[d.target], instances=d.action["instances"], last_change=view.now
            )
        elif d.kind in ("drain", "undrain"):
            draining = d.kind == "drain"
            drains += draining
            nodes[d.target] = replace(
                nodes[d.target],
                draining=draining,
                drained_by=DRAINED_BY_ADVISER if draining else "",
            )
    return out


def plugin_guards(decision: Decision, verdicts: Sequence[GuardVerdict]) -> tuple[Decision, str]:
    """``decision`` after the guard plugins' verdicts, and the refusal ("" when none refused).

    Skipped plugins are noted in ``inputs["plugins"]`` (``{name: "skipped: reason"}``),
    refusals there too (``"refused: reason"``); a skip never refuses."""
    if not verdicts:
        return decision, ""
    notes: dict[str, str] = {}
    refusals: list[str] = []
    for v in verdicts:
        if v.skipped is not None:
            notes[v.name] = f"skipped: {v.skipped}"
        elif not v.allow:
            notes[v.name] = f"refused: {v.reason}"
            refusals.append(f"{v.label}: {v.reason}")
        else:
            notes[v.name] = "allowed"
    inputs = {**decision.inputs, "plugins": notes}
    return decision.model_copy(update={"inputs": inputs}), "; ".join(refusals)

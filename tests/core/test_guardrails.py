"""Guardrails: what advisers propose is judged against bounds, rate and a valid blueprint."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aether.core.controller import DRAINED_BY_ADVISER, DRAINED_BY_CONTROLLER, DRAINED_BY_OPERATOR
from aether.core.guardrails import AppLimits, GuardrailView, NodeLimits, check, check_all
from aether.model.decisions import AutoscaleSpec, Proposal
from aether.model.risk import RiskStatus

NOW = 10_000.0
SPEC = AutoscaleSpec(min=2, max=8, metric="cpu", target=0.5, max_step_up=3, max_step_down=1)


def view(**overrides: Any) -> GuardrailView:
    base: dict[str, Any] = {
        "now": NOW,
        "apps": {
            "web": AppLimits("web", 4, SPEC, tenant="t1"),
            "plain": AppLimits("plain", 2, None, tenant="t1"),
            "rolling": AppLimits("rolling", 3, SPEC, rolling_out=True),
            "recent": AppLimits("recent", 3, SPEC, last_change=NOW - 4),
        },
        "nodes": {
            "a": NodeLimits("a"),
            "b": NodeLimits("b"),
            "mine": NodeLimits("mine", draining=True, drained_by=DRAINED_BY_ADVISER),
            "ops": NodeLimits("ops", draining=True, drained_by=DRAINED_BY_OPERATOR),
            "hot": NodeLimits(
                "hot", draining=True, drained_by=DRAINED_BY_CONTROLLER, status=RiskStatus.CRITICAL
            ),
        },
        "max_instances": 20,
        "max_step": 4,
        "min_interval": 10.0,
    }
    base.update(overrides)
    return GuardrailView(**base)


def P(kind: Any, target: Any, instances: Any = None, reason: Any = "because") -> Proposal:
    return Proposal(kind=kind, target=target, instances=instances, reason=reason)


ACCEPTED = [
    (2, P("scale", "web", 6), {"instances": 6, "from": 4, "direction": "up"}),
    (2, P("scale", "web", 3), {"instances": 3, "from": 4, "direction": "down"}),
    (2, P("scale", "web", 7.0), {"instances": 7, "from": 4, "direction": "up"}),
    (2, P("scale", "plain", 6), {"instances": 6, "from": 2, "direction": "up"}),
    (3, P("drain", "a"), {"draining": True, "drained_by": DRAINED_BY_ADVISER}),
    (3, P("undrain", "mine"), {"draining": False}),
]


@pytest.mark.parametrize(("layer", "proposal", "action"), ACCEPTED)
def test_sensible_proposals_are_accepted(
    layer: int, proposal: Proposal, action: dict[str, Any]
) -> None:
    verdict = check(proposal, layer, view())
    assert verdict.accepted, verdict.reasons
    assert verdict.decision.action == action
    assert verdict.decision.layer == layer and verdict.decision.reason == "because"
    assert verdict.decision.inputs["proposal"]["target"] == proposal.target


REFUSED = [
    (2, P("scale", "web", 1000), ["outside its [autoscale] bounds [2, 8]", "+996 instances"]),
    (2, P("scale", "web", 0), ["outside its [autoscale] bounds [2, 8]", "-4 instances"]),
    (2, P("scale", "web", 1), ["outside its [autoscale] bounds [2, 8]"]),
    (2, P("scale", "web", 9), ["outside its [autoscale] bounds"]),
    (2, P("scale", "web", 8), ["+4 instances in one step; at most +3"]),
    (2, P("scale", "plain", 21), ["outside the cluster's bounds [1, 20]"]),
    (2, P("scale", "plain", 0), ["outside the cluster's bounds [1, 20]"]),
    (2, P("scale", "web", -3), ["instances must be >= 0"]),
    (2, P("scale", "web", "many"), ["instances must be a whole number, not 'many'"]),
    (2, P("scale", "web", 2.5), ["whole number"]),
    (2, P("scale", "web", True), ["whole number"]),
    (2, P("scale", "web", None), ["whole number"]),
    (2, P("scale", "ghost", 3), ["no app named 'ghost'"]),
    (2, P("scale", None, 3), ["no app named None"]),
    (2, P("scale", "rolling", 4), ["in the middle of a rollout"]),
    (2, P("scale", "recent", 4), ["changed 4 s ago; at most one change per 10 s"]),
    (2, P("drain", "a"), ["layer 2 may propose only scale, not 'drain'"]),
    (3, P("scale", "web", 5), ["layer 3 may propose only drain, undrain, not 'scale'"]),
    (2, P("rm -rf", "web"), ["not 'rm -rf'"]),
    (1, P("scale", "web", 5), ["layer 1 may propose only nothing"]),
    (3, P("drain", "ghost"), ["no live node named 'ghost'"]),
    (3, P("undrain", "ops"), ["drained by an operator; only an operator undrains it"]),
    (3, P("undrain", "hot"), ["hot is still CRITICAL"]),
]


@pytest.mark.parametrize(("layer", "proposal", "fragments"), REFUSED)
def test_harmful_or_invalid_proposals_are_refused_with_reasons(
    layer: int, proposal: Proposal, fragments: list[str]
) -> None:
    verdict = check(proposal, layer, view())
    assert not verdict.accepted and not verdict.noop
    for fragment in fragments:
        assert fragment in verdict.detail, verdict.detail


def test_proposals_that_change_nothing_are_noops() -> None:
    for layer, proposal in [
        (2, P("scale", "web", 4)),
        (3, P("drain", "mine")),
        (3, P("undrain", "a")),
    ]:
        verdict = check(proposal, layer, view())
        assert verdict.noop and not verdict.accepted
        assert verdict.detail == "no change: it is already so"


def test_draining_every_node_stops_before_the_last_and_at_one_per_round() -> None:
    nodes = {n: NodeLimits(n) for n in ("a", "b", "c")}
    verdicts = check_all([P("drain", n) for n in ("a", "b", "c")], 3, view(nodes=nodes))
    assert [v.accepted for v in verdicts] == [True, False, False]
    assert "at most 1 node drain(s) per round" in verdicts[1].detail
    generous = view(nodes=nodes, max_drains=5)
    every = check_all([P("drain", n) for n in ("a", "b", "c")], 3, generous)
    assert [v.accepted for v in every] == [True, True, False]
    assert "c is the last schedulable node; never drain it" in every[2].detail
    alone = check(P("drain", "a"), 3, view(nodes={"a": NodeLimits("a")}))
    assert "a is the last schedulable node; never drain it" in alone.detail


def test_a_round_sees_its_own_accepted_changes() -> None:
    verdicts = check_all([P("scale", "web", 6), P("scale", "web", 7)], 2, view())
    assert verdicts[0].accepted
    assert not verdicts[1].accepted and "changed 0 s ago" in verdicts[1].detail


def test_the_decision_is_recordable_whatever_was_sent() -> None:
    verdict = check(P({"x": 1}, ["a"] * 100, reason=None), 2, view())
    assert verdict.decision.kind == "advice"
    assert len(verdict.decision.target) <= 128
    assert verdict.decision.reason == "(the adviser gave no reason)"
    assert verdict.decision.tenant is None
    assert check(P("scale", "web", 5), 2, view()).decision.tenant == "t1"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.one_of(st.sampled_from(["scale", "drain", "undrain"]), json_values),
    target=st.one_of(st.sampled_from(["web", "plain", "a", "b", "mine", "ops"]), json_values),
    instances=st.one_of(st.integers(-5, 2000), json_values),
    layer=st.integers(1, 3),
)
def test_whatever_is_proposed_the_accepted_ones_respect_the_bounds(
    kind: Any, target: Any, instances: Any, layer: int
) -> None:
    v = view()
    verdict = check(P(kind, target, instances), layer, v)
    if not verdict.accepted:
        assert verdict.reasons
        return
    d = verdict.decision
    if d.kind == "scale":
        app = v.apps[d.target]
        count = d.action["instances"]
        low, high = (
            (app.autoscale.min, app.autoscale.max) if app.autoscale else (1, v.max_instances)
        )
        assert low <= count <= high
        assert abs(count - app.instances) <= 4
        assert not app.rolling_out
    else:
        assert d.kind in ("drain", "undrain") and d.target in v.nodes
        if d.kind == "undrain":
            assert v.nodes[d.target].drained_by not in ("", DRAINED_BY_OPERATOR)

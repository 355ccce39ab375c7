"""Layer 1 as a pure function of snapshots: safety first, then autoscaling."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aether.core.controller import (
    DRAINED_BY_ADVISER,
    DRAINED_BY_CONTROLLER,
    DRAINED_BY_OPERATOR,
    AppState,
    ControllerPolicy,
    ControllerSnapshot,
    NodeState,
    evaluate,
    track_low_since,
)
from aether.model.decisions import AutoscaleSpec
from aether.model.risk import RiskAssessment, RiskStatus

NOW = 5_000.0
SIM = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def risk(
    node: str,
    status: RiskStatus = RiskStatus.LOW,
    *,
    confidence: float = 0.9,
    root_cause: str | None = None,
    ts: float = NOW,
) -> RiskAssessment:
    causes = {
        RiskStatus.LOW: "Stable",
        RiskStatus.CRITICAL: "Price Spike Detected",
    }
    return RiskAssessment(
        node=node,
        status=status,
        confidence=confidence,
        root_cause=root_cause or causes.get(status, "Memory Pressure"),
        rule="market.price_trend" if status is RiskStatus.CRITICAL else "stable",
        inputs={"trend": 0.31},
        ts=ts,
    )


def node(name: str, status: RiskStatus | None = RiskStatus.LOW, **kw: object) -> NodeState:
    assessment = risk(name, status) if status is not None else None
    return NodeState(node=name, risk=assessment, **kw)  # type: ignore[arg-type]


def snap(
    *nodes: NodeState, apps: tuple[AppState, ...] = (), now: float = NOW
) -> ControllerSnapshot:
    return ControllerSnapshot(now=now, apps=apps, nodes=nodes)


# -- drains ---------------------------------------------------------------------------------


def test_a_critical_node_is_drained_with_its_root_cause_and_confidence() -> None:
    decisions = evaluate(snap(node("a", RiskStatus.CRITICAL), node("b")))
    assert len(decisions) == 1
    d = decisions[0]
    assert (d.layer, d.kind, d.target, d.refusal) == (1, "drain", "a", "")
    assert d.action == {"draining": True, "drained_by": DRAINED_BY_CONTROLLER}
    assert "CRITICAL: Price Spike Detected (confidence 0.90" in d.reason
    assert d.inputs["root_cause"] == "Price Spike Detected" and d.inputs["confidence"] == 0.9
    assert d.inputs["risk_inputs"] == {"trend": 0.31}


def test_the_last_schedulable_node_is_never_drained() -> None:
    alone = evaluate(snap(node("a", RiskStatus.CRITICAL)))
    assert len(alone) == 1 and alone[0].refusal.startswith("it is the last schedulable node")
    others_draining = evaluate(
        snap(node("a", RiskStatus.CRITICAL), node("b", draining=True, drained_by="operator"))
    )
    assert others_draining[0].refusal


def test_of_two_critical_nodes_the_more_certain_is_drained_and_one_stays() -> None:
    a = NodeState("a", risk=risk("a", RiskStatus.CRITICAL, confidence=0.6))
    b = NodeState("b", risk=risk("b", RiskStatus.CRITICAL, confidence=0.95))
    decisions = evaluate(snap(a, b))
    assert [(d.target, bool(d.refusal)) for d in decisions] == [("b", False), ("a", True)]
    three = evaluate(snap(a, b, node("c")))
    assert [(d.target, bool(d.refusal)) for d in three] == [("b", False), ("a", False)]


def test_what_is_not_drained() -> None:
    stale = NodeState("a", risk=risk("a", RiskStatus.CRITICAL, ts=NOW - 60))
    high = NodeState("a", risk=risk("a", RiskStatus.HIGH))
    already = NodeState(
        "a", risk=risk("a", RiskStatus.CRITICAL), draining=True, drained_by=DRAINED_BY_OPERATOR
    )
    unknown = NodeState("a", risk=None)
    for case in (stale, high, already, unknown):
        assert evaluate(snap(case, node("b"))) == [], case


# -- undrains -------------------------------------------------------------------------------


def test_the_controller_undrains_its_own_drain_after_a_low_spell() -> None:
    mine = node("a", draining=True, drained_by=DRAINED_BY_CONTROLLER, low_since=NOW - 31)
    decisions = evaluate(snap(mine, node("b")), ControllerPolicy(undrain_after=30))
    assert len(decisions) == 1
    d = decisions[0]
    assert (d.kind, d.target, d.action) == ("undrain", "a", {"draining": False})
    assert "has been LOW (Stable) for 31 s" in d.reason


def test_undrain_waits_and_never_touches_other_drains() -> None:
    policy = ControllerPolicy(undrain_after=30)
    cases = [
        node("a", draining=True, drained_by=DRAINED_BY_CONTROLLER, low_since=NOW - 10),
        node("a", draining=True, drained_by=DRAINED_BY_CONTROLLER, low_since=None),
        node("a", draining=True, drained_by=DRAINED_BY_OPERATOR, low_since=NOW - 999),
        node("a", draining=True, drained_by=DRAINED_BY_ADVISER, low_since=NOW - 999),
        node("a", draining=True, drained_by="", low_since=NOW - 999),
        NodeState(
            "a",
            draining=True,
            drained_by=DRAINED_BY_CONTROLLER,
            risk=risk("a", RiskStatus.MEDIUM),
            low_since=NOW - 999,
        ),
    ]
    for case in cases:
        assert evaluate(snap(case, node("b")), policy) == [], case


def test_low_since_tracks_an_unbroken_low_spell() -> None:
    low = {"a": risk("a", ts=100.0), "b": risk("b", ts=100.0)}
    first = track_low_since({}, low, 100.0)
    assert first == {"a": 100.0, "b": 100.0}
    later = track_low_since(first, {"a": risk("a", ts=110.0), "b": risk("b", ts=110.0)}, 110.0)
    assert later == {"a": 100.0, "b": 100.0}
    broken = track_low_since(
        later, {"a": risk("a", RiskStatus.CRITICAL, ts=111.0), "b": risk("b", ts=111.0)}, 111.0
    )
    assert broken == {"b": 100.0}
    again = track_low_since(broken, {"a": risk("a", ts=112.0)}, 112.0)
    assert again == {"a": 112.0}  # b vanished, a starts over
    assert track_low_since(again, {"a": risk("a", ts=50.0)}, 113.0) == {}  # stale


# -- autoscaling ----------------------------------------------------------------------------


def _busy(seconds: int = 30, value: float = 3.0) -> tuple[tuple[float, float], ...]:
    return tuple((NOW - seconds + 1 + i, value) for i in range(seconds))


SPEC = AutoscaleSpec(min=1, max=10, metric="in_flight", target=1.0, horizon=0)


def test_an_app_over_its_target_is_scaled_after_safety() -> None:
    app = AppState("web", 2, SPEC, _busy(), reporting=2, tenant="t1")
    decisions = evaluate(snap(node("a", RiskStatus.CRITICAL), node("b"), apps=(app,)))
    assert [d.kind for d in decisions] == ["drain", "scale"]
    scale = decisions[1]
    assert scale.target == "web" and scale.tenant == "t1"
    assert scale.action == {"instances": 6, "from": 2, "direction": "up"}
    assert scale.inputs["metric"] == "in_flight" and scale.inputs["samples"] == 30


def test_apps_without_autoscale_or_in_a_rollout_are_left_alone() -> None:
    plain = AppState("plain", 2, None, _busy())
    rolling = AppState("rolling", 2, SPEC, _busy(), rolling_out=True)
    out_of_bounds_rolling = AppState("oob", 50, SPEC, (), rolling_out=True)
    assert evaluate(snap(node("a"), apps=(plain, rolling, out_of_bounds_rolling))) == []


def test_missing_telemetry_never_scales_down() -> None:
    app = AppState("web", 5, SPEC, ())
    assert evaluate(snap(node("a"), apps=(app,))) == []
    stale = AppState("web", 5, SPEC, tuple((t - 60, 0.0) for t, _ in _busy()))
    assert evaluate(snap(node("a"), apps=(stale,))) == []


def test_out_of_bounds_apps_come_back_into_bounds_at_once() -> None:
    app = AppState("web", 40, SPEC, (), last_up=NOW - 0.5)
    [d] = evaluate(snap(node("a"), apps=(app,)))
    assert d.action["instances"] == 10 and d.action["direction"] == "down"


# -- properties -----------------------------------------------------------------------------

statuses = st.sampled_from([None, *RiskStatus])
drainers = st.sampled_from(["", DRAINED_BY_OPERATOR, DRAINED_BY_CONTROLLER, DRAINED_BY_ADVISER])


@st.composite
def clusters(draw: st.DrawFn) -> ControllerSnapshot:
    count = draw(st.integers(1, 6))
    nodes = []
    for i in range(count):
        status = draw(statuses)
        draining = draw(st.booleans())
        nodes.append(
            NodeState(
                node=f"n{i}",
                draining=draining,
                drained_by=draw(drainers) if draining else "",
                risk=risk(f"n{i}", status, ts=NOW - draw(st.floats(0, 30))) if status else None,
                low_since=draw(st.one_of(st.none(), st.floats(NOW - 100, NOW))),
            )
        )
    return snap(*nodes)


@SIM
@given(clusters())
def test_never_drains_the_last_schedulable_node(cluster: ControllerSnapshot) -> None:
    decisions = evaluate(cluster)
    names = {n.node for n in cluster.nodes}
    schedulable = {n.node for n in cluster.nodes if not n.draining}
    for d in decisions:
        assert d.target in names
        if d.refusal:
            continue
        by_name = {n.node: n for n in cluster.nodes}
        if d.kind == "drain":
            assert not by_name[d.target].draining
            schedulable.discard(d.target)
        elif d.kind == "undrain":
            assert by_name[d.target].drained_by == DRAINED_BY_CONTROLLER
            schedulable.add(d.target)
    if any(not n.draining for n in cluster.nodes):
        assert schedulable, decisions


@SIM
@given(
    flips=st.lists(st.sampled_from([RiskStatus.LOW, RiskStatus.CRITICAL]), min_size=1, max_size=60),
    count=st.integers(1, 4),
)
def test_a_flapping_risk_never_leaves_the_cluster_without_a_schedulable_node(
    flips: list[RiskStatus], count: int
) -> None:
    """Every node follows the same flapping risk; the controller applies its own decisions."""
    policy = ControllerPolicy(undrain_after=5)
    nodes = {f"n{i}": NodeState(f"n{i}") for i in range(count)}
    low_since: dict[str, float] = {}
    changes: dict[str, list[float]] = {name: [] for name in nodes}
    for second, status in enumerate(flips):
        now = NOW + second
        assessments = {name: risk(name, status, ts=now) for name in nodes}
        low_since = track_low_since(low_since, assessments, now)
        view = snap(
            *(
                replace(n, risk=assessments[n.node], low_since=low_since.get(n.node))
                for n in nodes.values()
            ),
            now=now,
        )
        for d in evaluate(view, policy):
            if d.refusal:
                continue
            draining = d.kind == "drain"
            nodes[d.target] = replace(
                nodes[d.target],
                draining=draining,
                drained_by=DRAINED_BY_CONTROLLER if draining else "",
            )
            changes[d.target].append(now)
        assert any(not n.draining for n in nodes.values())
    for times in changes.values():  # a drain is undone only after undrain_after seconds LOW
        for drained, undrained in zip(times[::2], times[1::2], strict=False):
            assert undrained - drained >= policy.undrain_after

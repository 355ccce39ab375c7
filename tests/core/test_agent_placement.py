"""Where deployed agents' replicas go: the pure placement (``core/agent_placement.py``)."""

from __future__ import annotations

from aether.core.agent_placement import (
    AgentChange,
    AgentNode,
    AgentWant,
    deployment_status,
    plan,
)


def _nodes(*ids: str, **risk: str) -> list[AgentNode]:
    return [AgentNode(id=i, risk=risk.get(i), free_cpu=4.0) for i in ids]


def test_replicas_go_to_distinct_nodes() -> None:
    plans = plan([AgentWant("a", 2)], {}, _nodes("n1", "n2", "n3"))
    assert len(set(plans["a"].nodes)) == 2
    assert all(c.action == "place" for c in plans["a"].changes)


def test_no_more_replicas_than_eligible_nodes() -> None:
    plans = plan([AgentWant("a", 3)], {}, _nodes("n1", "n2"))
    assert plans["a"].nodes == ("n1", "n2")
    assert deployment_status(3, len(plans["a"].nodes)) == "degraded"


def test_a_placed_agent_that_is_fine_stays_put() -> None:
    plans = plan([AgentWant("a", 1)], {"a": ["n2"]}, _nodes("n1", "n2"))
    assert plans["a"].nodes == ("n2",) and plans["a"].changes == ()


def test_a_lost_node_s_replica_moves() -> None:
    plans = plan([AgentWant("a", 2)], {"a": ["n1", "gone"]}, _nodes("n1", "n2"))
    assert plans["a"].nodes == ("n1", "n2")
    assert plans["a"].changes == (
        AgentChange("move", "node gone is lost", from_node="gone", to_node="n2"),
    )


def test_a_draining_node_s_replica_moves_and_none_is_placed_there() -> None:
    nodes = [AgentNode("n1", draining=True), AgentNode("n2")]
    plans = plan([AgentWant("a", 1), AgentWant("b", 1)], {"a": ["n1"]}, nodes)
    assert plans["a"].nodes == ("n2",) and plans["b"].nodes == ("n2",)
    assert plans["a"].changes[0].reason == "node n1 is draining"


def test_a_draining_node_s_replica_is_dropped_when_no_other_node_is_left() -> None:
    nodes = [AgentNode("n1", draining=True), AgentNode("n2")]
    plans = plan([AgentWant("a", 2)], {"a": ["n1", "n2"]}, nodes)
    assert plans["a"].nodes == ("n2",)
    assert plans["a"].changes == (
        AgentChange("remove", "node n1 is draining; no other node", from_node="n1"),
    )


def test_fewer_replicas_remove_the_worst_placed() -> None:
    nodes = _nodes("n1", "n2", n1="MEDIUM")
    plans = plan([AgentWant("a", 1)], {"a": ["n1", "n2"]}, nodes)
    assert plans["a"].nodes == ("n2",)
    assert plans["a"].changes[0].action == "remove" and plans["a"].changes[0].from_node == "n1"


def test_low_risk_and_low_load_come_first() -> None:
    nodes = [
        AgentNode("risky", risk="MEDIUM", free_cpu=8.0),
        AgentNode("busy", load=5, free_cpu=8.0),
        AgentNode("idle", load=0, free_cpu=1.0),
    ]
    assert plan([AgentWant("a", 1)], {}, nodes)["a"].nodes == ("idle",)
    assert plan([AgentWant("a", 2)], {}, nodes)["a"].nodes == ("busy", "idle")


def test_agents_spread_over_the_nodes() -> None:
    wants = [AgentWant(f"a{i}", 1) for i in range(4)]
    plans = plan(wants, {}, _nodes("n1", "n2"))
    used = [p.nodes[0] for p in plans.values()]
    assert used.count("n1") == 2 and used.count("n2") == 2


def test_one_replica_moves_off_a_high_risk_node_to_a_lower_risk_one() -> None:
    nodes = _nodes("n1", "n2", "n3", n1="HIGH", n2="HIGH")
    plans = plan([AgentWant("a", 2)], {"a": ["n1", "n2"]}, nodes)
    assert plans["a"].nodes in (("n1", "n3"), ("n2", "n3"))
    (change,) = plans["a"].changes
    assert change.action == "move" and change.to_node == "n3"
    assert change.reason.endswith("is at risk HIGH")


def test_no_move_off_a_risky_node_when_every_other_is_as_risky() -> None:
    nodes = _nodes("n1", "n2", n1="HIGH", n2="CRITICAL")
    plans = plan([AgentWant("a", 1)], {"a": ["n1"]}, nodes)
    assert plans["a"].nodes == ("n1",) and plans["a"].changes == ()


def test_an_agent_not_wanted_any_more_gets_no_plan() -> None:
    assert plan([], {"a": ["n1"]}, _nodes("n1")) == {}


def test_status_of_a_deployment() -> None:
    assert deployment_status(2, 0) == "pending"
    assert deployment_status(2, 1) == "degraded"
    assert deployment_status(2, 2) == "running"

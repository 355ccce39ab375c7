"""The rebalance decision: one move at a time, only when it strictly improves an app's
spread, never onto a draining node, never for a stateful app without a checkpoint;
and the automatic step's rate limit."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aether.core.lifecycle import Command, State
from aether.core.rebalance import (
    MIN_SPREAD,
    RebalanceView,
    plan_moves,
    propose,
    rate_limit,
)
from aether.core.scheduler import DesiredApp, InstanceView, NodeView
from aether.model.app import RolloutSpec

COOP = frozenset({"cooperative"})


def node(nid: str, **kw: Any) -> NodeView:
    return NodeView(id=nid, cpus=kw.pop("cpus", 4.0), memory_mb=4096, **kw)


def app(name: str = "web", instances: int = 4, **kw: Any) -> DesiredApp:
    return DesiredApp(app=name, version=1, instances=instances, **kw)


def inst(nid: str, n: int, name: str = "web", **kw: Any) -> InstanceView:
    return InstanceView(
        key=f"instances/{nid}/{name}@1/{n}",
        node=nid,
        app=name,
        version=1,
        n=n,
        command=kw.pop("command", Command.ACTIVATE),
        state=kw.pop("state", State.ACTIVE),
        **kw,
    )


def on(*nodes: str, name: str = "web") -> list[InstanceView]:
    return [inst(nid, n, name) for n, nid in enumerate(nodes)]


NODES = [node("a"), node("b")]


def view(apps: list[DesiredApp], instances: list[InstanceView], **kw: Any) -> RebalanceView:
    return RebalanceView(apps=apps, nodes=kw.pop("nodes", NODES), instances=instances, **kw)


def test_all_on_one_node_moves_one_instance_to_the_empty_one() -> None:
    step = propose(view([app()], on("a", "a", "a", "a")))
    assert step.move is not None
    assert (step.move.from_node, step.move.to_node) == ("a", "b")
    assert step.move.instance == "instances/a/web@1/3"  # the newest copy
    assert step.move.per_node == {"a": 4, "b": 0}
    assert "spread 4" in step.move.reason and "start new, then stop old" in step.move.reason


def test_only_a_move_that_improves_the_spread() -> None:
    # 2/1: the spread is 1, no move could improve it (it would only flip to 1/2)
    step = propose(view([app(instances=3)], on("a", "a", "b")))
    assert step.move is None
    assert "nothing to move" in step.reason
    (refusal,) = step.refusals
    assert refusal.kind == "balanced" and "spread 1" in refusal.reason
    # 3/1: spread 2, one move gives 2/2
    assert propose(view([app()], on("a", "a", "a", "b"))).move is not None


def test_at_most_one_move_and_none_while_a_migration_is_in_flight() -> None:
    apps = [app("x"), app("y")]
    both = on("a", "a", "a", "a", name="x") + on("a", "a", "a", "b", name="y")
    step = propose(view(apps, both))
    assert step.move is not None and step.move.app == "x"  # the larger spread first
    busy = propose(view(apps, both, in_flight=1))
    assert busy.move is None and "in flight" in busy.reason


def test_an_app_with_a_move_under_way_waits() -> None:
    moving = [*on("a", "a", "a"), inst("a", 3, migrate_to="b", migration_id="m")]
    step = propose(view([app()], moving))
    assert step.move is None
    assert step.refusals[0].kind == "waiting" and "moving" in step.refusals[0].reason
    starting = [*on("a", "a", "a"), inst("b", 3, command=Command.LOAD, state=State.LOADING)]
    assert propose(view([app()], starting)).refusals[0].kind == "waiting"


def test_never_onto_a_draining_node() -> None:
    nodes = [node("a"), node("b", draining=True), node("c", draining=True)]
    step = propose(view([app()], on("a", "a", "a", "a"), nodes=nodes))
    assert step.move is None
    assert step.refusals[0].per_node == {"a": 4}  # draining nodes are not counted
    # while b still holds instances the scheduler must move, nothing else moves
    nodes = [node("a"), node("b", draining=True), node("c")]
    step = propose(view([app()], on("a", "a", "a", "b"), nodes=nodes))
    assert step.move is None and "draining" in step.refusals[0].reason
    # once b is empty, the move goes to c, never to b
    step = propose(view([app()], on("a", "a", "a", "a"), nodes=nodes))
    assert step.move is not None and step.move.to_node == "c"


def test_never_onto_a_node_without_room() -> None:
    nodes = [node("a"), node("b", cpus=0.05), node("c")]
    step = propose(view([app()], on("a", "a", "a", "a", "c", "c"), nodes=nodes))
    # b has the fewest (0) but no room; c (2) takes it: a 4 → 3, c 2 → 3
    assert step.move is not None and step.move.to_node == "c"
    alone = [node("a"), node("b", cpus=0.05)]
    step = propose(view([app()], on("a", "a", "a", "a"), nodes=alone))
    assert step.move is None
    assert step.refusals[0].kind == "blocked" and "no room" in step.refusals[0].reason


def test_never_a_stateful_app_that_cannot_be_checkpointed() -> None:
    stateful = app(instances=2, stateful=True)
    placed = on("a", "a")
    step = propose(view([stateful], placed))  # no checkpoint method on any node
    assert step.move is None
    (refusal,) = step.refusals
    assert refusal.kind == "blocked"
    assert "cannot checkpoint" in refusal.reason and "cooperative_checkpoint" in refusal.reason
    # criu asked for, only the cooperative protocol on: still not moved
    criu_only = view([stateful], placed, checkpoint={"a": COOP, "b": COOP}, methods={"web": "criu"})
    assert propose(criu_only).move is None
    # with the cooperative protocol on the source node, it moves by checkpoint/restore
    step = propose(view([stateful], placed, checkpoint={"a": COOP}))
    assert step.move is not None and step.move.stateful
    assert "checkpoint/restore" in step.move.reason


def test_never_mid_rollout_nor_binpack() -> None:
    rolling = app(rollout=RolloutSpec())
    step = propose(view([rolling], on("a", "a", "a", "a")))
    assert step.move is None and "rollout" in step.refusals[0].reason
    packed = app(strategy="binpack")
    step = propose(view([packed], on("a", "a", "a", "a")))
    assert step.move is None and "binpack" in step.refusals[0].reason


def test_only_limits_the_apps_considered() -> None:
    apps = [app("x"), app("y")]
    both = on("a", "a", "a", "a", name="x") + on("a", "a", "a", "a", name="y")
    step = propose(view(apps, both, only={"y"}))
    assert step.move is not None and step.move.app == "y"
    assert all(r.app == "y" for r in step.refusals)


def test_plan_moves_reaches_the_spread_one_move_at_a_time() -> None:
    moves = plan_moves(view([app()], on("a", "a", "a", "a")))
    assert [(m.from_node, m.to_node) for m in moves] == [("a", "b"), ("a", "b")]
    assert len({m.instance for m in moves}) == 2


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=12))
def test_every_move_strictly_improves_and_the_plan_ends_balanced(placed: list[str]) -> None:
    nodes = [node("a"), node("b"), node("c")]
    v = view([app(instances=len(placed))], on(*placed), nodes=nodes)
    counts = Counter({"a": 0, "b": 0, "c": 0, **Counter(placed)})
    for move in plan_moves(v):
        before = sum(c * c for c in counts.values())
        counts[move.from_node] -= 1
        counts[move.to_node] += 1
        assert sum(c * c for c in counts.values()) < before
    assert max(counts.values()) - min(counts.values()) < MIN_SPREAD


def test_rate_limit() -> None:
    assert rate_limit(100.0, None, 30.0) is None
    assert rate_limit(100.0, 60.0, 30.0) is None
    why = rate_limit(100.0, 80.0, 30.0)
    assert why is not None and "one move per 30 s" in why and "10.0 s" in why
    off = rate_limit(100.0, None, 0.0)
    assert off is not None and "off" in off


def test_a_retiring_copy_does_not_count() -> None:
    retiring = inst("a", 9, command=Command.DEACTIVATE, state=State.DEACTIVATING)
    step = propose(view([app(instances=2)], [*on("a", "b"), retiring]))
    assert step.move is None and step.refusals[0].kind == "balanced"
    # but it still takes room on its node
    full = [node("a"), node("b", cpus=0.1)]
    moved = replace(retiring, node="b", key="instances/b/web@1/9")
    assert propose(view([app(instances=2)], [*on("a", "a"), moved], nodes=full)).move is None

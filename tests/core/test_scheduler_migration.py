"""Migration in the planner: stateless moves start new before stopping old; stateful
moves checkpoint first and restore the snapshot on the target.

Table tests pin each decision; a simulated control loop (leader ``plan`` + nodes
stepping through ``node_step``, interleaved by hypothesis) checks the whole move:
it converges on the target, a stateless app never has fewer serving copies than
wanted, a stateful one never runs two copies at once and keeps its state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aether.core.lifecycle import Command, NodeStep, State, node_step
from aether.core.scheduler import (
    Action,
    DesiredApp,
    InstanceView,
    NodeView,
    Place,
    Remove,
    SetCommand,
    Unplaceable,
    check_target,
    plan,
)

SNAP = "sha256:" + "5" * 64
LATEST = "sha256:" + "7" * 64
A = TypeVar("A", Place, SetCommand, Remove, Unplaceable)


def node(nid: str, **kw: Any) -> NodeView:
    return NodeView(id=nid, cpus=4.0, memory_mb=4096, **kw)


def app(instances: int = 1, stateful: bool = False, **kw: Any) -> DesiredApp:
    return DesiredApp(app="web", version=1, instances=instances, stateful=stateful, **kw)


def inst(
    nid: str,
    n: int = 0,
    command: Command = Command.ACTIVATE,
    state: State | None = State.ACTIVE,
    **kw: Any,
) -> InstanceView:
    return InstanceView(
        key=f"instances/{nid}/web@1/{n}",
        node=nid,
        app="web",
        version=1,
        n=n,
        command=command,
        state=state,
        mod_revision=7,
        **kw,
    )


def of(kind: type[A], actions: Sequence[Action]) -> list[A]:
    return [a for a in actions if isinstance(a, kind)]


NODES = [node("n1"), node("n2"), node("n3")]


# -- stateless -------------------------------------------------------------------------


def test_stateless_replacement_goes_to_the_target_first() -> None:
    old = inst("n1", migrate_to="n3", migration_id="m1")
    actions = plan([app()], NODES, [old])
    assert of(Place, actions) == [Place("n3", "web", 1, 1, None, "m1")]
    assert of(SetCommand, actions) == []  # the old one keeps serving meanwhile


def test_stateless_old_retires_once_the_replacement_is_active() -> None:
    old = inst("n1", migrate_to="n3", migration_id="m1")
    new = inst("n3", n=1, migration_id="m1")
    actions = plan([app()], NODES, [old, new])
    assert of(Place, actions) == []
    assert of(SetCommand, actions) == [SetCommand(old.key, Command.DEACTIVATE, 7)]


def test_stateless_waits_while_the_replacement_starts() -> None:
    old = inst("n1", migrate_to="n3", migration_id="m1")
    new = inst("n3", n=1, command=Command.LOAD, state=State.LOADED, migration_id="m1")
    actions = plan([app()], NODES, [old, new])
    assert of(Place, actions) == []
    assert of(SetCommand, actions) == [SetCommand(new.key, Command.ACTIVATE, 7)]


def test_migrate_anywhere_never_picks_the_node_it_leaves() -> None:
    # n1 is the emptiest node, but it is the one being left
    busy = [inst("n2", n=5, state=State.ACTIVE), inst("n3", n=6)]
    old = inst("n1", migrate_to="", migration_id="m1")
    actions = plan([app(instances=3)], NODES, [old, *busy])
    (placed,) = of(Place, actions)
    assert placed.node != "n1" and placed.migration_id == "m1"


def test_an_unusable_target_falls_back_to_another_node() -> None:
    nodes = [node("n1"), node("n2", draining=True), node("n3")]
    old = inst("n1", migrate_to="n2", migration_id="m1")
    actions = plan([app()], nodes, [old])
    assert of(Place, actions) == [Place("n3", "web", 1, 1, None, "m1")]


def test_no_node_to_go_to_is_unplaceable_with_the_reason() -> None:
    nodes = [node("n1"), node("n2", draining=True)]
    old = inst("n1", migrate_to="n2", migration_id="m1")
    actions = plan([app()], nodes, [old])
    assert of(Place, actions) == []
    (why,) = of(Unplaceable, actions)
    assert "migration target n2: draining" in why.reason
    assert "besides n1" in why.reason
    assert of(SetCommand, actions) == []  # still serving where it is


def test_a_replaced_migration_places_nothing_more() -> None:
    """A scale-up during a move must not hand the migration's id to a second copy."""
    old = inst("n1", migrate_to="n3", migration_id="m1")
    new = inst("n3", n=1, command=Command.LOAD, state=State.LOADING, migration_id="m1")
    actions = plan([app(instances=3)], NODES, [old, new])
    assert [p.migration_id for p in of(Place, actions)] == ["", ""]


# -- stateful --------------------------------------------------------------------------


def test_stateful_running_instance_is_checkpointed_first() -> None:
    old = inst("n1", migrate_to="n2", migration_id="m1")
    actions = plan([app(stateful=True)], NODES, [old])
    assert actions == [SetCommand(old.key, Command.DEACTIVATE, 7, checkpoint=True)]


def test_stateful_waits_for_the_checkpoint() -> None:
    for state in (State.ACTIVE, State.DEACTIVATING, None):
        old = inst("n1", command=Command.DEACTIVATE, state=state, checkpoint=True, migrate_to="n2")
        assert plan([app(stateful=True)], NODES, [old]) == [], state


def test_stateful_replacement_restores_the_checkpoint_on_the_target() -> None:
    old = inst(
        "n1",
        command=Command.DEACTIVATE,
        state=State.LOADED,
        checkpoint=True,
        snapshot=SNAP,
        migrate_to="n2",
        migration_id="m1",
    )
    actions = plan([app(stateful=True, latest_snapshot=LATEST)], NODES, [old])
    assert actions == [Place("n2", "web", 1, 1, SNAP, "m1")]  # the old one waits for it


def test_stateful_old_unloads_once_the_replacement_exists() -> None:
    old = inst("n1", command=Command.DEACTIVATE, state=State.LOADED, checkpoint=True, snapshot=SNAP)
    new = inst("n2", n=1, command=Command.LOAD, state=None, restore_from=SNAP)
    actions = plan([app(stateful=True)], NODES, [old, new])
    assert actions == [SetCommand(old.key, Command.UNLOAD, 7)]


def test_stateful_without_a_snapshot_restores_what_it_has() -> None:
    """A node that restarted mid-checkpoint rebuilds to LOADED with no snapshot."""
    old = inst(
        "n1",
        command=Command.DEACTIVATE,
        state=State.LOADED,
        checkpoint=True,
        restore_from=SNAP,
        migrate_to="",
    )
    (placed,) = of(Place, plan([app(stateful=True, latest_snapshot=LATEST)], NODES, [old]))
    assert placed.restore_from == SNAP and placed.node != "n1"
    bare = replace(old, restore_from=None)
    (placed,) = of(Place, plan([app(stateful=True, latest_snapshot=LATEST)], NODES, [bare]))
    assert placed.restore_from == LATEST


def test_stateful_instance_that_is_not_running_moves_at_once() -> None:
    old = inst("n1", command=Command.ACTIVATE, state=State.LOADED, restore_from=SNAP)
    old = replace(old, migrate_to="n3", migration_id="m1")
    actions = plan([app(stateful=True)], NODES, [old])
    assert SetCommand(old.key, Command.UNLOAD, 7) in actions
    assert Place("n3", "web", 1, 1, SNAP, "m1") in actions


def test_draining_node_moves_stateful_instances_by_checkpoint() -> None:
    nodes = [node("n1", draining=True), node("n2")]
    old = inst("n1")
    actions = plan([app(stateful=True)], nodes, [old])
    assert actions == [SetCommand(old.key, Command.DEACTIVATE, 7, checkpoint=True)]
    # a stateless app on the same node: replacement first, as before
    actions = plan([app()], nodes, [old])
    assert of(Place, actions) == [Place("n2", "web", 1, 1)]


def test_stateful_instance_with_nowhere_to_go_keeps_serving() -> None:
    nodes = [node("n1", draining=True), node("n2", drivers=frozenset({"container"}))]
    old = inst("n1")
    actions = plan([app(stateful=True)], nodes, [old])
    assert of(SetCommand, actions) == [] and of(Place, actions) == []
    (why,) = of(Unplaceable, actions)
    assert why.reason.startswith(f"cannot move {old.key}")


def test_lost_stateful_instance_restores_the_latest_snapshot() -> None:
    gone = inst("n9")
    actions = plan([app(stateful=True, latest_snapshot=LATEST)], NODES, [gone])
    assert Remove(gone.key, 7) in actions
    (placed,) = of(Place, actions)
    assert placed.restore_from == LATEST


def test_failed_checkpoint_unloads_and_the_app_restarts_from_its_latest_snapshot() -> None:
    old = inst("n1", command=Command.DEACTIVATE, state=State.FAILED, checkpoint=True)
    actions = plan([app(stateful=True, latest_snapshot=LATEST)], NODES, [old])
    assert SetCommand(old.key, Command.UNLOAD, 7) in actions
    (placed,) = of(Place, actions)
    assert placed.restore_from == LATEST


def test_captured_instance_no_longer_wanted_unloads() -> None:
    old = inst("n1", command=Command.DEACTIVATE, state=State.LOADED, checkpoint=True, snapshot=SNAP)
    assert plan([app(instances=0, stateful=True)], NODES, [old]) == [
        SetCommand(old.key, Command.UNLOAD, 7)
    ]


def test_the_checkpoint_flag_means_nothing_to_a_stateless_app() -> None:
    old = inst("n1", command=Command.DEACTIVATE, state=State.LOADED, checkpoint=True)
    actions = plan([app()], NODES, [old])
    assert SetCommand(old.key, Command.UNLOAD, 7) in actions


def test_check_target_says_why() -> None:
    nodes = [node("n1"), node("n2", draining=True), NodeView("n3", cpus=0.05, memory_mb=4096)]
    want = app()
    assert check_target("n1", want, nodes, []) is None
    assert check_target("n9", want, nodes, []) == "node 'n9' is not live"
    assert check_target("n2", want, nodes, []) == "node 'n2': draining"
    why = check_target("n3", want, nodes, [])
    assert why is not None and "not enough free cpu or memory" in why


# -- the whole move, simulated ----------------------------------------------------------


@dataclass
class Rec:
    view: InstanceView
    value: int | None = None  # the app's state: on disk, or in the running process


@dataclass
class World:
    nodes: list[NodeView]
    want: DesiredApp
    recs: dict[str, Rec] = field(default_factory=dict)
    snapshots: dict[str, int] = field(default_factory=dict)
    rev: int = 100
    serving_low: int = 99  # fewest serving copies seen (stateless)
    running_high: int = 0  # most running copies seen at once (stateful)

    def bump(self) -> int:
        self.rev += 1
        return self.rev

    def observe(self) -> None:
        views = [r.view for r in self.recs.values()]
        serving = sum(v.state is State.ACTIVE and v.command is Command.ACTIVATE for v in views)
        running = sum(v.state in (State.ACTIVE, State.ACTIVATING) for v in views)
        self.serving_low = min(self.serving_low, serving)
        self.running_high = max(self.running_high, running)

    def lead(self) -> list[Action]:
        actions = plan([self.want], self.nodes, [r.view for r in self.recs.values()])
        for action in actions:
            if isinstance(action, Place):
                key = f"instances/{action.node}/web@1/{action.n}"
                assert key not in self.recs
                view = InstanceView(
                    key=key,
                    node=action.node,
                    app="web",
                    version=1,
                    n=action.n,
                    command=Command.LOAD,
                    state=None,
                    mod_revision=self.bump(),
                    restore_from=action.restore_from,
                    migration_id=action.migration_id,
                )
                self.recs[key] = Rec(view)
            elif isinstance(action, SetCommand):
                rec = self.recs[action.key]
                if rec.view.mod_revision == action.mod_revision:
                    rec.view = replace(
                        rec.view,
                        command=action.command,
                        checkpoint=rec.view.checkpoint or action.checkpoint,
                        mod_revision=self.bump(),
                    )
        return actions

    def step(self, key: str) -> None:
        """One node-side move of one instance (a -ING state, then its result)."""
        rec = self.recs[key]
        v = rec.view
        what = node_step(v.command, v.state if v.state is not State.LOADING else None)

        def report(state: State, **kw: Any) -> None:
            rec.view = replace(rec.view, state=state, mod_revision=self.bump(), **kw)

        if v.state is State.LOADING:
            rec.value = self.snapshots[v.restore_from] if v.restore_from else rec.value
            report(State.LOADED)
        elif v.state is State.ACTIVATING and v.command is Command.ACTIVATE:
            report(State.ACTIVE)
        elif v.state is State.DEACTIVATING:
            if v.checkpoint:
                digest = f"sha256:{key}-{rec.value}"
                self.snapshots[digest] = rec.value or 0
                report(State.LOADED, snapshot=digest)
            else:
                report(State.LOADED)
        elif what is NodeStep.LOAD:
            report(State.LOADING)
        elif what is NodeStep.ACTIVATE:
            report(State.ACTIVATING)
        elif what is NodeStep.DEACTIVATE:
            report(State.DEACTIVATING)
        elif what is NodeStep.UNLOAD:
            del self.recs[key]


def start(world: World, value: int) -> str:
    key = "instances/n1/web@1/0"
    view = InstanceView(
        key=key,
        node="n1",
        app="web",
        version=1,
        n=0,
        command=Command.ACTIVATE,
        state=State.ACTIVE,
        mod_revision=world.bump(),
    )
    world.recs[key] = Rec(view, value)
    return key


def settle(world: World, schedule: list[int]) -> None:
    """Run the interleaving hypothesis chose, then let the loop quiesce."""
    for pick in schedule:
        keys = sorted(world.recs)
        if pick == 0 or not keys:
            world.lead()
        else:
            world.step(keys[pick % len(keys)])
        world.observe()
    for _ in range(40):
        before = {k: r.view for k, r in world.recs.items()}
        actions = world.lead()
        world.observe()
        for key in sorted(world.recs):
            world.step(key)
            world.observe()
        if not actions and before == {k: r.view for k, r in world.recs.items()}:
            return  # a whole round changed nothing: quiet
    raise AssertionError(f"did not converge: {world.recs}")


SIM = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
schedules = st.lists(st.integers(0, 6), max_size=40)


@SIM
@given(schedule=schedules, target=st.sampled_from(["n2", "n3", ""]), drain=st.booleans())
def test_stateful_move_keeps_its_state_and_never_runs_twice(
    schedule: list[int], target: str, drain: bool
) -> None:
    nodes = [node("n1", draining=drain), node("n2"), node("n3")]
    world = World(nodes, app(stateful=True))
    key = start(world, 42)
    if not drain or target:
        world.recs[key].view = replace(world.recs[key].view, migrate_to=target, migration_id="m1")
    settle(world, schedule)
    (final,) = world.recs.values()
    assert final.view.node != "n1"
    if target:
        assert final.view.node == target
    assert final.value == 42  # the state crossed over
    assert final.view.restore_from in world.snapshots
    assert world.running_high == 1  # checkpoint first: never two copies at once


@SIM
@given(schedule=schedules, target=st.sampled_from(["n2", "n3", ""]))
def test_stateless_move_never_drops_below_the_wanted_count(
    schedule: list[int], target: str
) -> None:
    world = World(list(NODES), app())
    key = start(world, 0)
    world.recs[key].view = replace(world.recs[key].view, migrate_to=target, migration_id="m1")
    settle(world, schedule)
    (final,) = world.recs.values()
    assert final.view.node != "n1" and (not target or final.view.node == target)
    assert final.view.migration_id == "m1"
    assert world.serving_low == 1  # start new before stopping old


# -- one writer, restores ----------------------------------------------------------------


def test_a_stateful_instance_is_replaced_only_once_its_nodes_lease_expired() -> None:
    """A node that stopped heartbeating stays live until its lease expires: no second copy."""
    silent = inst("n1")
    assert of(Place, plan([app(stateful=True, latest_snapshot=LATEST)], NODES, [silent])) == []
    expired = [n for n in NODES if n.id != "n1"]  # the lease ran out: its node key is gone
    actions = plan([app(stateful=True, latest_snapshot=LATEST)], expired, [silent])
    assert Remove(silent.key, 7) in actions
    (placed,) = of(Place, actions)
    assert placed.node != "n1" and placed.restore_from == LATEST


def test_a_restore_places_the_replacement_on_the_chosen_snapshot() -> None:
    """`aether snapshots restore`: the replacement restores the orphan, not the checkpoint."""
    orphan = "sha256:" + "6" * 64
    stopped = inst(
        "n1",
        command=Command.DEACTIVATE,
        state=State.LOADED,
        checkpoint=True,
        snapshot=SNAP,
        migrate_to="",
        migration_id="m1",
        restore=orphan,
    )
    (placed,) = of(Place, plan([app(stateful=True, latest_snapshot=LATEST)], NODES, [stopped]))
    assert placed.restore_from == orphan and placed.node != "n1"
    assert placed.migration_id == "m1"

"""Planner invariants: ``plan(blueprints, nodes, instances) -> actions``.

Property tests generate arbitrary snapshots (nodes with resources, drivers,
labels and draining flags; blueprints; instances of any app, version, command
and state, some on nodes that are gone) and check what the plan does to them,
with eligibility, capacity and "serving" recomputed here from their
definitions rather than taken from the scheduler.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aether.core.lifecycle import Command, State
from aether.core.scheduler import (
    Action,
    DesiredApp,
    InstanceView,
    NodeView,
    Place,
    Remove,
    SetCommand,
    Unplaceable,
    plan,
)

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NODE_IDS = ["n0", "n1", "n2", "n3", "n4"]
GONE_IDS = ["gone0", "gone1"]
APPS = ["api", "web", "worker"]
ORPHAN = "orphan"  # an app with instances but no blueprint
DRIVERS = ["process", "container"]
SERVING = (Command.LOAD, Command.ACTIVATE)
_ORDER = {Command.LOAD: 0, Command.ACTIVATE: 1, Command.DEACTIVATE: 2, Command.UNLOAD: 3}
EPS = 1e-6
A = TypeVar("A", Place, SetCommand, Remove, Unplaceable)


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------

labels_st = st.fixed_dictionaries(
    {}, optional={"zone": st.sampled_from(["a", "a", "b"]), "gpu": st.just("yes")}
)


@st.composite
def nodes_st(draw: st.DrawFn) -> list[NodeView]:
    ids = draw(st.lists(st.sampled_from(NODE_IDS), min_size=1, unique=True, max_size=5))
    eligible_mostly = st.sampled_from(
        [
            frozenset({"process"}),
            frozenset({"process"}),
            frozenset({"process", "container"}),
            frozenset({"container"}),
            frozenset(),
        ]
    )
    return [
        NodeView(
            id=nid,
            cpus=draw(st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0])),
            memory_mb=draw(st.sampled_from([64, 128, 256, 512, 1024])),
            drivers=draw(eligible_mostly),
            labels=draw(labels_st),
            draining=draw(st.integers(0, 5)) == 0,
        )
        for nid in ids
    ]


@st.composite
def blueprints_st(draw: st.DrawFn) -> list[DesiredApp]:
    apps = draw(st.lists(st.sampled_from(APPS), min_size=1, unique=True, max_size=len(APPS)))
    return [
        DesiredApp(
            app=app,
            version=draw(st.integers(1, 3)),
            instances=draw(st.integers(0, 6)),
            driver=draw(st.sampled_from(["process", "process", "process", "container"])),
            constraints=draw(st.sampled_from([{}, {}, {}, {"zone": "a"}, {"gpu": "yes"}])),
            cpu=draw(st.sampled_from([0.1, 0.25, 0.5, 1.0])),
            memory_mb=draw(st.sampled_from([32, 64, 128, 256])),
            strategy=draw(st.sampled_from(["spread", "binpack"])),
        )
        for app in apps
    ]


def key_of(node: str, app: str, version: int, n: int) -> str:
    return f"{node}/{app}@{version}/{n}"


@st.composite
def instances_st(
    draw: st.DrawFn, nodes: Sequence[NodeView], blueprints: Sequence[DesiredApp]
) -> list[InstanceView]:
    """Instances mostly of the blueprints' apps and versions on live nodes, serving.

    Some are on nodes that are gone, of older versions, of an app without a
    blueprint, retiring or FAILED.
    """
    versions = {bp.app: bp.version for bp in blueprints}
    live = [n.id for n in nodes]
    node_st = st.sampled_from(live * 6 + GONE_IDS) if live else st.sampled_from(GONE_IDS)
    app_st = st.sampled_from([bp.app for bp in blueprints] * 5 + [ORPHAN])
    command_st = st.sampled_from([*[Command.ACTIVATE] * 3, Command.LOAD, *Command])
    state_st = st.sampled_from([*[State.ACTIVE] * 4, None, State.LOADED, *State])
    raw = draw(
        st.lists(
            st.tuples(
                node_st,
                app_st,
                st.sampled_from([0, 0, 0, 1, 2, 3]),  # 0: the blueprint's version
                st.integers(0, 7),
                command_st,
                state_st,
                st.sampled_from([0.1, 0.25, 0.5]),
                st.sampled_from([32, 64, 128]),
            ),
            max_size=16,
        )
    )
    out: dict[tuple[str, int, int], InstanceView] = {}
    for i, (node, app, v, n, command, state, cpu, mem) in enumerate(raw):
        version = versions.get(app, 1) if v == 0 else v
        # one copy per (app, version, n); copies sharing n are covered by
        # test_duplicate_indices_are_retired_once_all_active
        out.setdefault(
            (app, version, n),
            InstanceView(
                key=key_of(node, app, version, n),
                node=node,
                app=app,
                version=version,
                n=n,
                command=command,
                state=state,
                mod_revision=100 + i,
                cpu=cpu,
                memory_mb=mem,
            ),
        )
    return list(out.values())


@dataclass(frozen=True)
class Snapshot:
    blueprints: list[DesiredApp]
    nodes: list[NodeView]
    instances: list[InstanceView]

    @property
    def desired(self) -> dict[str, DesiredApp]:
        return {bp.app: bp for bp in self.blueprints}

    @property
    def alive(self) -> dict[str, NodeView]:
        return {node.id: node for node in self.nodes}

    def run(self) -> list[Action]:
        return plan(self.blueprints, self.nodes, self.instances)


@st.composite
def snapshots_st(draw: st.DrawFn) -> Snapshot:
    nodes = draw(nodes_st())
    blueprints = draw(blueprints_st())
    return Snapshot(blueprints, nodes, draw(instances_st(nodes, blueprints)))


snapshots = snapshots_st()


# --------------------------------------------------------------------------------------
# Definitions, written independently of the scheduler
# --------------------------------------------------------------------------------------


def eligible(node: NodeView, want: DesiredApp) -> bool:
    return (
        not node.draining
        and want.driver in node.drivers
        and all(node.labels.get(k) == v for k, v in want.constraints.items())
    )


def serving(inst: InstanceView) -> bool:
    return inst.command in SERVING and inst.state is not State.FAILED


def is_current(inst: InstanceView, want: DesiredApp, alive: Mapping[str, NodeView]) -> bool:
    """A copy that counts towards the blueprint: right version, serving, good node."""
    node = alive.get(inst.node)
    return (
        node is not None
        and inst.app == want.app
        and inst.version == want.version
        and serving(inst)
        and eligible(node, want)
    )


def is_superseded(inst: InstanceView, want: DesiredApp, alive: Mapping[str, NodeView]) -> bool:
    """Serving, on a live node, but not a current copy (old version or bad node)."""
    return (
        inst.node in alive
        and inst.app == want.app
        and serving(inst)
        and not is_current(inst, want, alive)
    )


def apply(snap: Snapshot, actions: Iterable[Action]) -> list[InstanceView]:
    """The instances after the leader writes every action (the snapshot is fresh)."""
    by_key = {inst.key: inst for inst in snap.instances}
    desired = snap.desired
    for action in actions:
        if isinstance(action, Remove):
            assert by_key[action.key].mod_revision == action.mod_revision
            del by_key[action.key]
        elif isinstance(action, SetCommand):
            inst = by_key[action.key]
            assert inst.mod_revision == action.mod_revision
            by_key[action.key] = replace(inst, command=action.command)
        elif isinstance(action, Place):
            want = desired[action.app]
            assert action.version == want.version
            key = key_of(action.node, action.app, action.version, action.n)
            assert key not in by_key, f"Place over an existing key {key}"
            by_key[key] = InstanceView(
                key=key,
                node=action.node,
                app=action.app,
                version=action.version,
                n=action.n,
                command=Command.LOAD,
                state=None,
                cpu=want.cpu,
                memory_mb=want.memory_mb,
            )
    return list(by_key.values())


def free_resources(
    nodes: Sequence[NodeView], instances: Iterable[InstanceView]
) -> dict[str, list[float]]:
    """[cpu, memory] left per live node, counting everything that sits there."""
    free = {node.id: [node.cpus, float(node.memory_mb)] for node in nodes}
    for inst in instances:
        if inst.node in free:
            free[inst.node][0] -= inst.cpu
            free[inst.node][1] -= inst.memory_mb
    return free


def fits(free: Sequence[float], want: DesiredApp) -> bool:
    return free[0] + EPS >= want.cpu and free[1] >= want.memory_mb


def of_type(actions: Iterable[Action], kind: type[A]) -> list[A]:
    return [a for a in actions if isinstance(a, kind)]


def count_current(
    instances: Iterable[InstanceView], want: DesiredApp, alive: Mapping[str, NodeView]
) -> int:
    return sum(1 for inst in instances if is_current(inst, want, alive))


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------


@PROPERTY
@given(snapshots)
def test_actions_are_well_formed(snap: Snapshot) -> None:
    """At most one write per instance; writes name existing keys at their revision."""
    actions = snap.run()
    keys = Counter(a.key for a in actions if isinstance(a, SetCommand | Remove))
    assert all(count == 1 for count in keys.values()), keys
    apply(snap, actions)  # asserts revisions and fresh Place keys
    for action in of_type(actions, SetCommand):
        before = next(i for i in snap.instances if i.key == action.key)
        # commands only move forward through the lifecycle
        assert _ORDER[action.command] > _ORDER[before.command], (before, action)


@PROPERTY
@given(snapshots)
def test_instances_on_dead_nodes_are_removed(snap: Snapshot) -> None:
    actions = snap.run()
    dead = {inst.key for inst in snap.instances if inst.node not in snap.alive}
    assert {a.key for a in of_type(actions, Remove)} == dead
    # and nothing else is written to them
    assert not {a.key for a in of_type(actions, SetCommand)} & dead
    assert all(p.node in snap.alive for p in of_type(actions, Place))


@PROPERTY
@given(snapshots)
def test_never_more_placements_than_needed(snap: Snapshot) -> None:
    actions = snap.run()
    after = apply(snap, actions)
    places = Counter(p.app for p in of_type(actions, Place))
    missing = {u.app: u.count for u in of_type(actions, Unplaceable)}
    for app, want in snap.desired.items():
        before_n = count_current(snap.instances, want, snap.alive)
        after_n = count_current(after, want, snap.alive)
        assert after_n <= want.instances
        if before_n >= want.instances:
            assert places[app] == 0
            assert after_n == want.instances
        else:
            assert places[app] + missing.get(app, 0) == want.instances - before_n
            assert after_n == before_n + places[app]
    for app in places:
        assert app in snap.desired


@PROPERTY
@given(snapshots)
def test_placements_only_on_eligible_nodes_with_room(snap: Snapshot) -> None:
    actions = snap.run()
    free = free_resources(snap.nodes, snap.instances)
    for place in of_type(actions, Place):
        want = snap.desired[place.app]
        node = snap.alive[place.node]
        assert eligible(node, want), (node, want)
        assert fits(free[place.node], want), (free[place.node], want)
        free[place.node][0] -= want.cpu
        free[place.node][1] -= want.memory_mb


@PROPERTY
@given(snapshots)
def test_unplaceable_exactly_when_capacity_runs_out(snap: Snapshot) -> None:
    actions = snap.run()
    after = apply(snap, actions)
    free = free_resources(snap.nodes, after)
    unplaceable = of_type(actions, Unplaceable)
    assert len({u.app for u in unplaceable}) == len(unplaceable), "one report per app"
    reported = {u.app: u for u in unplaceable}
    for app, want in snap.desired.items():
        short = want.instances - count_current(after, want, snap.alive)
        room = [n.id for n in snap.nodes if eligible(n, want) and fits(free[n.id], want)]
        if app in reported:
            assert reported[app].count == short > 0
            assert reported[app].reason
            # capacity really ran out: no eligible node can take one more
            assert room == [], (app, room)
        else:
            assert short == 0
    assert set(reported) <= set(snap.desired)


@PROPERTY
@given(snapshots)
def test_new_instance_indices_are_unique_per_app(snap: Snapshot) -> None:
    actions = snap.run()
    taken: dict[str, set[int]] = defaultdict(set)
    for inst in snap.instances:
        if inst.node in snap.alive:
            taken[inst.app].add(inst.n)
    for place in of_type(actions, Place):
        assert place.n not in taken[place.app], place
        assert place.n >= 0
        taken[place.app].add(place.n)


@PROPERTY
@given(snapshots)
def test_superseded_retire_only_once_current_is_all_active(snap: Snapshot) -> None:
    """Start new before stopping old, and do stop old once new is all ACTIVE."""
    actions = snap.run()
    after = apply(snap, actions)
    written = {a.key: a.command for a in of_type(actions, SetCommand)}
    for want in snap.desired.values():
        active_now = sum(
            1 for i in after if is_current(i, want, snap.alive) and i.state is State.ACTIVE
        )
        for inst in snap.instances:
            if not is_superseded(inst, want, snap.alive):
                continue
            if active_now >= want.instances:
                assert inst.key in written, inst
                if inst.state in (State.ACTIVE, State.ACTIVATING):
                    assert written[inst.key] is Command.DEACTIVATE  # graceful
                elif inst.state is not State.DEACTIVATING:
                    assert written[inst.key] is Command.UNLOAD
            else:
                assert inst.key not in written, (inst, active_now, want.instances)


@PROPERTY
@given(snapshots)
def test_failed_instances_get_unload(snap: Snapshot) -> None:
    actions = snap.run()
    written = {a.key: a.command for a in of_type(actions, SetCommand)}
    for inst in snap.instances:
        if inst.node not in snap.alive or inst.state is not State.FAILED:
            continue
        if inst.command is Command.UNLOAD:
            assert inst.key not in written
        else:
            assert written.get(inst.key) is Command.UNLOAD, inst


@PROPERTY
@given(snapshots)
def test_apps_without_blueprint_are_retired(snap: Snapshot) -> None:
    actions = snap.run()
    written = {a.key: a.command for a in of_type(actions, SetCommand)}
    for inst in snap.instances:
        if inst.node in snap.alive and inst.app not in snap.desired and serving(inst):
            assert written.get(inst.key) in (Command.DEACTIVATE, Command.UNLOAD), inst
    assert not any(a.app not in snap.desired for a in actions if isinstance(a, Place | Unplaceable))


@PROPERTY
@given(snapshots)
def test_current_instances_retired_only_as_excess(snap: Snapshot) -> None:
    """No churn; on scale-down the instances not yet ACTIVE go first."""
    actions = snap.run()
    written = {a.key: a.command for a in of_type(actions, SetCommand)}
    for want in snap.desired.values():
        current = [i for i in snap.instances if is_current(i, want, snap.alive)]
        retired = [i for i in current if written.get(i.key) in (Command.DEACTIVATE, Command.UNLOAD)]
        kept = [i for i in current if i not in retired]
        assert len(retired) == max(0, len(current) - want.instances)
        if any(i.state is State.ACTIVE for i in retired):
            assert all(i.state is State.ACTIVE for i in kept)
        for inst in kept:  # a kept copy that finished loading is told to activate
            if inst.command is Command.LOAD and inst.state is State.LOADED:
                assert written.get(inst.key) is Command.ACTIVATE
            else:
                assert inst.key not in written


@PROPERTY
@given(
    st.lists(
        st.tuples(
            st.sampled_from(NODE_IDS[:3]),
            st.sampled_from(
                [
                    (Command.ACTIVATE, State.ACTIVE),
                    (Command.ACTIVATE, State.ACTIVE),
                    (Command.ACTIVATE, State.ACTIVATING),
                    (Command.ACTIVATE, State.LOADING),
                    (Command.LOAD, State.LOADED),
                    (Command.LOAD, State.LOADING),
                    (Command.LOAD, None),
                ]
            ),
        ),
        min_size=1,
        max_size=8,
    ),
    st.data(),
)
def test_scale_down_retires_the_not_yet_active_first(
    copies: list[tuple[str, tuple[Command, State | None]]], data: st.DataObject
) -> None:
    nodes = identical_nodes(3, None)
    instances = [
        InstanceView(
            key=key_of(node, "api", 1, n),
            node=node,
            app="api",
            version=1,
            n=n,
            command=command,
            state=state,
            mod_revision=n,
            cpu=1.0,
        )
        for n, (node, (command, state)) in enumerate(copies)
    ]
    desired = data.draw(st.integers(0, len(instances)))
    actions = plan([DesiredApp("api", 1, desired, cpu=1.0)], nodes, instances)
    assert not of_type(actions, Place)
    written = {a.key: a.command for a in of_type(actions, SetCommand)}
    retired = [i for i in instances if written.get(i.key) in (Command.DEACTIVATE, Command.UNLOAD)]
    kept = [i for i in instances if i not in retired]
    assert len(kept) == desired
    active = [i for i in instances if i.state is State.ACTIVE]
    # serving copies survive as long as there are others to retire
    assert sum(1 for i in kept if i.state is State.ACTIVE) == min(desired, len(active))
    for inst in retired:
        graceful = inst.state in (State.ACTIVE, State.ACTIVATING)
        assert written[inst.key] is (Command.DEACTIVATE if graceful else Command.UNLOAD)


@PROPERTY
@given(snapshots, st.randoms(use_true_random=False))
def test_plan_is_deterministic(snap: Snapshot, rnd: random.Random) -> None:
    first = snap.run()
    assert snap.run() == first
    nodes = list(snap.nodes)
    rnd.shuffle(nodes)
    assert plan(snap.blueprints, nodes, snap.instances) == first
    blueprints = list(snap.blueprints)
    rnd.shuffle(blueprints)
    assert plan(blueprints, snap.nodes, snap.instances) == first


@PROPERTY
@given(
    st.integers(1, 5),
    st.lists(st.tuples(st.sampled_from(NODE_IDS[:3]), st.integers(0, 4)), min_size=1, max_size=8),
)
def test_duplicate_indices_are_retired_once_all_active(
    desired: int, copies: list[tuple[str, int]]
) -> None:
    """Two copies of one index (a lease flap mid-replacement) end as one."""
    nodes = identical_nodes(3, None)
    instances = [
        InstanceView(
            key=key_of(node, "api", 1, n),
            node=node,
            app="api",
            version=1,
            n=n,
            command=Command.ACTIVATE,
            state=State.ACTIVE,
            mod_revision=i,
            cpu=1.0,
        )
        for i, (node, n) in enumerate(dict.fromkeys(copies))
    ]
    want = DesiredApp(app="api", version=1, instances=desired, cpu=1.0)
    snap = Snapshot([want], nodes, instances)
    actions = snap.run()
    after = [i for i in apply(snap, actions) if serving(i)]
    distinct = {i.n for i in instances}
    if len(distinct) >= desired:
        assert not of_type(actions, Place)
        assert len(after) == desired
        assert len({i.n for i in after}) == desired, after
    else:
        # replacements first; every index keeps a serving copy meanwhile
        assert len(of_type(actions, Place)) == desired - len(distinct)
        assert {i.n for i in after if i.state is State.ACTIVE} == distinct


# --------------------------------------------------------------------------------------
# Strategies: spread and binpack on identical nodes
# --------------------------------------------------------------------------------------


def identical_nodes(k: int, per_node: int | None) -> list[NodeView]:
    """``k`` nodes that each fit ``per_node`` instances of 1 cpu (None: plenty)."""
    cpus = 1000.0 if per_node is None else float(per_node)
    return [NodeView(id=f"n{i}", cpus=cpus, memory_mb=1 << 20) for i in range(k)]


def per_node_counts(actions: Iterable[Action], nodes: Sequence[NodeView]) -> list[int]:
    counts = Counter(p.node for p in of_type(actions, Place))
    return [counts[n.id] for n in nodes]


@PROPERTY
@given(st.integers(1, 6), st.one_of(st.none(), st.integers(1, 4)), st.integers(0, 25))
def test_spread_balances_on_identical_nodes(k: int, per_node: int | None, count: int) -> None:
    nodes = identical_nodes(k, per_node)
    want = DesiredApp(app="api", version=1, instances=count, cpu=1.0, strategy="spread")
    actions = plan([want], nodes, [])
    counts = per_node_counts(actions, nodes)
    capacity = count if per_node is None else min(count, k * per_node)
    assert sum(counts) == capacity
    assert max(counts) - min(counts) <= 1, counts
    unplaceable = of_type(actions, Unplaceable)
    assert [u.count for u in unplaceable] == ([count - capacity] if count > capacity else [])


@PROPERTY
@given(st.integers(1, 6), st.integers(1, 4), st.integers(0, 25))
def test_binpack_concentrates_on_identical_nodes(k: int, per_node: int, count: int) -> None:
    nodes = identical_nodes(k, per_node)
    want = DesiredApp(app="api", version=1, instances=count, cpu=1.0, strategy="binpack")
    actions = plan([want], nodes, [])
    counts = per_node_counts(actions, nodes)
    placed = min(count, k * per_node)
    assert sum(counts) == placed
    # as few nodes as possible: all full but at most one
    assert sum(1 for c in counts if c) == math.ceil(placed / per_node)
    assert sum(1 for c in counts if 0 < c < per_node) <= 1, counts


@PROPERTY
@given(st.lists(st.integers(0, 4), min_size=2, max_size=5), st.integers(0, 8))
def test_spread_fills_the_emptiest_nodes_first(existing: list[int], extra: int) -> None:
    nodes = identical_nodes(len(existing), None)
    instances = [
        InstanceView(
            key=key_of(node.id, "api", 1, 10 * i + j),
            node=node.id,
            app="api",
            version=1,
            n=10 * i + j,
            command=Command.ACTIVATE,
            state=State.ACTIVE,
            cpu=1.0,
        )
        for i, (node, have) in enumerate(zip(nodes, existing, strict=True))
        for j in range(have)
    ]
    total = sum(existing) + extra
    want = DesiredApp(app="api", version=1, instances=total, cpu=1.0, strategy="spread")
    actions = plan([want], nodes, instances)
    added = per_node_counts(actions, nodes)
    final = [a + b for a, b in zip(existing, added, strict=True)]
    assert sum(added) == extra
    # water filling: a node got new instances only if it ends no higher than
    # one above the least loaded node
    for have, got in zip(final, added, strict=True):
        if got:
            assert have <= min(final) + 1, (existing, final)


# --------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------


def inst(
    node: str,
    n: int,
    *,
    app: str = "api",
    version: int = 1,
    command: Command = Command.ACTIVATE,
    state: State | None = State.ACTIVE,
    rev: int = 1,
) -> InstanceView:
    return InstanceView(
        key=key_of(node, app, version, n),
        node=node,
        app=app,
        version=version,
        n=n,
        command=command,
        state=state,
        mod_revision=rev,
    )


THREE = [NodeView(id=f"n{i}", cpus=4, memory_mb=4096) for i in range(3)]


def test_fresh_deploy_spreads_one_per_node() -> None:
    actions = plan([DesiredApp("api", 1, 3)], THREE, [])
    assert sorted((a.node, a.n) for a in of_type(actions, Place)) == [
        ("n0", 0),
        ("n1", 1),
        ("n2", 2),
    ]
    assert len(actions) == 3


def test_loaded_instance_is_activated() -> None:
    loaded = inst("n0", 0, command=Command.LOAD, state=State.LOADED, rev=7)
    actions = plan([DesiredApp("api", 1, 1)], THREE, [loaded])
    assert actions == [SetCommand(loaded.key, Command.ACTIVATE, 7)]


def test_rollout_starts_new_before_stopping_old() -> None:
    old = [inst("n0", 0, rev=1), inst("n1", 1, rev=2)]
    v2 = DesiredApp("api", 2, 2)
    first = plan([v2], THREE, old)
    placed = of_type(first, Place)
    assert [(p.version, p.n) for p in placed] == [(2, 2), (2, 3)]
    assert not of_type(first, SetCommand)  # the old ones keep serving

    half = [*old, inst("n2", 2, version=2, rev=3), inst("n0", 3, version=2, state=State.LOADING)]
    assert plan([v2], THREE, half) == []

    done = [*old, inst("n2", 2, version=2, rev=3), inst("n0", 3, version=2, rev=4)]
    assert plan([v2], THREE, done) == [
        SetCommand(old[0].key, Command.DEACTIVATE, 1),
        SetCommand(old[1].key, Command.DEACTIVATE, 2),
    ]


def test_lost_node_instance_is_removed_and_placed_elsewhere() -> None:
    lost = inst("gone", 0, rev=5)
    kept = inst("n0", 1, rev=6)
    actions = plan([DesiredApp("api", 1, 2)], THREE, [lost, kept])
    assert actions[0] == Remove(lost.key, 5)
    [place] = of_type(actions, Place)
    assert place.node in ("n1", "n2")  # spread: not next to the one that is left
    assert place.n != kept.n


def test_failed_instance_is_unloaded_and_replaced() -> None:
    failed = inst("n0", 0, state=State.FAILED, rev=9)
    actions = plan([DesiredApp("api", 1, 1)], THREE, [failed])
    assert SetCommand(failed.key, Command.UNLOAD, 9) in actions
    [place] = of_type(actions, Place)
    assert place.n == 1


def test_draining_node_is_vacated_after_replacements_are_active() -> None:
    nodes = [replace(THREE[0], draining=True), *THREE[1:]]
    on_drained = inst("n0", 0, rev=1)
    first = plan([DesiredApp("api", 1, 1)], nodes, [on_drained])
    assert [(type(a), getattr(a, "node", None)) for a in first] == [(Place, "n1")]
    replaced = [on_drained, inst("n1", 1, rev=2)]
    assert plan([DesiredApp("api", 1, 1)], nodes, replaced) == [
        SetCommand(on_drained.key, Command.DEACTIVATE, 1)
    ]


def test_instance_on_node_that_lost_a_required_label_is_replaced() -> None:
    nodes = [replace(THREE[0], labels={"zone": "b"}), replace(THREE[1], labels={"zone": "a"})]
    want = DesiredApp("api", 1, 1, constraints={"zone": "a"})
    wrong = inst("n0", 0, rev=1)
    first = plan([want], nodes, [wrong])
    assert [(type(a), getattr(a, "node", None)) for a in first] == [(Place, "n1")]
    assert plan([want], nodes, [wrong, inst("n1", 1, rev=2)]) == [
        SetCommand(wrong.key, Command.DEACTIVATE, 1)
    ]


def test_unplaceable_reports_what_is_missing_and_why() -> None:
    small = [NodeView(id="n0", cpus=1, memory_mb=4096, labels={"zone": "a"})]
    actions = plan([DesiredApp("api", 1, 3, cpu=0.5)], small, [])
    assert len(of_type(actions, Place)) == 2
    [unplaceable] = of_type(actions, Unplaceable)
    assert unplaceable.count == 1
    assert "insufficient" in unplaceable.reason

    [nowhere] = plan([DesiredApp("api", 1, 2)], [], [])
    assert nowhere == Unplaceable("api", 2, "no live nodes")

    [mismatch] = plan([DesiredApp("api", 1, 2, constraints={"zone": "b"})], small, [])
    assert isinstance(mismatch, Unplaceable)
    assert mismatch.count == 2
    assert "zone" in mismatch.reason


def test_capacity_counts_what_already_runs() -> None:
    node = NodeView(id="n0", cpus=1, memory_mb=256)
    busy = InstanceView(
        key=key_of("n0", "other", 1, 0),
        node="n0",
        app="other",
        version=1,
        n=0,
        command=Command.ACTIVATE,
        state=State.ACTIVE,
        cpu=0.8,
        memory_mb=64,
    )
    actions = plan([DesiredApp("other", 1, 1), DesiredApp("api", 1, 1, cpu=0.5)], [node], [busy])
    assert actions == [Unplaceable("api", 1, "1 node(s): insufficient cpu or memory")]


def test_binpack_prefers_the_node_already_running_the_app() -> None:
    running = inst("n1", 0)
    actions = plan([DesiredApp("api", 1, 3, strategy="binpack")], THREE, [running])
    assert {p.node for p in of_type(actions, Place)} == {"n1"}

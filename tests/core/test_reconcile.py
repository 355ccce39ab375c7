"""The whole control loop, simulated in memory: leader ``plan`` + node ``node_step``.

A :class:`World` holds what the state store would (instance records with a
command, the last reported state and a revision), what each node holds locally
(its own view of each instance, lost when it restarts), the live node set and
the blueprints. The leader plans from a snapshot and applies with the same
compare-and-swap rules as ``server/leader.py``; nodes move each instance one
lifecycle step per turn, reporting through the same ``can_report`` gate as the
server. Hypothesis interleaves crashes and changes: a leader that applies only
a prefix of its plan, plans that go stale while nodes move, node restarts,
node deaths and returns, lease flaps in the middle of a leader pass, failing
steps, and blueprint changes (scale, new version, constraints, removal). Once faults
stop, the loop must converge within a few passes to exactly what the
blueprints ask for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aether.core.lifecycle import Command, NodeStep, State, can_report, node_step
from aether.core.scheduler import (
    Action,
    DesiredApp,
    InstanceView,
    NodeView,
    Place,
    Remove,
    SetCommand,
    Strategy,
    Unplaceable,
    plan,
)

# Passes after the last fault until the world is quiet. The longest path of one
# instance is: Remove/UNLOAD-failed + Place (1) → ACTIVATE (2) → retire old
# versions once the new ones are ACTIVE: DEACTIVATE (3) → UNLOAD (4); one more
# pass observes that nothing is left to do.
CONVERGENCE_PASSES = 5

SIM = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------
# The simulated world
# --------------------------------------------------------------------------------------


@dataclass
class Record:
    """An instance key in the state store."""

    node: str
    app: str
    version: int
    n: int
    command: Command
    state: State | None
    mod_revision: int
    cpu: float
    memory_mb: int


def eligible(node: NodeView, want: DesiredApp) -> bool:
    return (
        not node.draining
        and want.driver in node.drivers
        and all(node.labels.get(k) == v for k, v in want.constraints.items())
    )


@dataclass
class World:
    nodes: dict[str, NodeView]
    blueprints: dict[str, DesiredApp]
    live: set[str] = field(default_factory=set)
    store: dict[str, Record] = field(default_factory=dict)
    local: dict[str, dict[str, State]] = field(default_factory=dict)
    revision: int = 0
    refused: list[tuple[str, State | None, State]] = field(default_factory=list)
    unplaceable: list[Unplaceable] = field(default_factory=list)

    @classmethod
    def create(cls, nodes: Iterable[NodeView], blueprints: Iterable[DesiredApp]) -> World:
        by_id = {node.id: node for node in nodes}
        return cls(
            nodes=by_id,
            blueprints={bp.app: bp for bp in blueprints},
            live=set(by_id),
            local={nid: {} for nid in by_id},
        )

    def _next_revision(self) -> int:
        self.revision += 1
        return self.revision

    # -- leader ------------------------------------------------------------------

    def views(self) -> list[InstanceView]:
        return [
            InstanceView(
                key=key,
                node=r.node,
                app=r.app,
                version=r.version,
                n=r.n,
                command=r.command,
                state=r.state,
                mod_revision=r.mod_revision,
                cpu=r.cpu,
                memory_mb=r.memory_mb,
            )
            for key, r in sorted(self.store.items())
        ]

    def plan(self) -> tuple[list[Action], dict[str, DesiredApp]]:
        nodes = [self.nodes[nid] for nid in sorted(self.live)]
        blueprints = dict(self.blueprints)
        return plan(list(blueprints.values()), nodes, self.views()), blueprints

    def apply(self, actions: Sequence[Action], blueprints: dict[str, DesiredApp]) -> None:
        """Write actions as ``apply_action`` does: each guarded by a revision check."""
        for action in actions:
            if isinstance(action, Place):
                key = f"{action.node}/{action.app}@{action.version}/{action.n}"
                if key in self.store:  # create_revision == 0 fails
                    continue
                want = blueprints[action.app]
                self.store[key] = Record(
                    node=action.node,
                    app=action.app,
                    version=action.version,
                    n=action.n,
                    command=Command.LOAD,
                    state=None,
                    mod_revision=self._next_revision(),
                    cpu=want.cpu,
                    memory_mb=want.memory_mb,
                )
            elif isinstance(action, SetCommand):
                record = self.store.get(action.key)
                if record is not None and record.mod_revision == action.mod_revision:
                    record.command = action.command
                    record.mod_revision = self._next_revision()
            elif isinstance(action, Remove):
                record = self.store.get(action.key)
                if record is not None and record.mod_revision == action.mod_revision:
                    del self.store[action.key]
            elif isinstance(action, Unplaceable):
                self.unplaceable.append(action)

    def leader_pass(self) -> list[Action]:
        actions, blueprints = self.plan()
        self.apply(actions, blueprints)
        return actions

    # -- nodes -------------------------------------------------------------------

    def _report(self, key: str, new: State) -> bool:
        """The node's report, through the server's ``can_report`` gate."""
        record = self.store.get(key)
        if record is None:
            return False
        if not can_report(record.state, new):
            self.refused.append((key, record.state, new))
            return False
        record.state = new
        record.mod_revision = self._next_revision()
        return True

    def step_node(self, nid: str, fail_n: int | None = None) -> None:
        """One lifecycle step for every instance on a live node.

        ``fail_n``: the instance with this index fails its LOAD or ACTIVATE.
        """
        if nid not in self.live:
            return
        local = self.local[nid]
        mine = sorted(key for key, r in self.store.items() if r.node == nid)
        for key in [k for k in local if k not in self.store]:
            del local[key]  # no longer assigned: the runner stops and removes it
        for key in mine:
            record = self.store[key]
            step = node_step(record.command, local.get(key))
            fails = record.n == fail_n
            if step is NodeStep.LOAD:
                self._run(key, [State.LOADING, State.FAILED if fails else State.LOADED])
            elif step is NodeStep.ACTIVATE:
                self._run(key, [State.ACTIVATING, State.FAILED if fails else State.ACTIVE])
            elif step is NodeStep.DEACTIVATE:
                self._run(key, [State.DEACTIVATING, State.LOADED])
            elif step is NodeStep.UNLOAD:
                self._report(key, State.UNLOADING)  # refusal tolerated, as in the runner
                local.pop(key, None)
                if record.command is Command.UNLOAD:  # the server's `unloaded` check
                    del self.store[key]

    def _run(self, key: str, reports: list[State]) -> None:
        local = self.local[self.store[key].node]
        for state in reports:
            local[key] = state  # the runner sets its view, then reports
            if not self._report(key, state):
                return  # a refused report aborts the step

    def restart(self, nid: str) -> None:
        self.local[nid] = {}

    def kill(self, nid: str) -> None:
        self.live.discard(nid)
        self.local[nid] = {}

    def revive(self, nid: str) -> None:
        """The node registers again, with nothing local, and acts at once."""
        if nid not in self.live:
            self.live.add(nid)
            self.step_node(nid)

    def calm_pass(self) -> list[Action]:
        actions = self.leader_pass()
        for nid in sorted(self.live):
            self.step_node(nid)
        return actions

    # -- observations ------------------------------------------------------------

    def quiet(self) -> bool:
        """Neither the leader nor any live node has anything left to do."""
        if any(not isinstance(a, Unplaceable) for a in self.plan()[0]):
            return False
        return all(
            node_step(r.command, self.local[r.node].get(key)) is NodeStep.NOTHING
            for key, r in self.store.items()
            if r.node in self.live
        )

    def serving(self, app: str) -> list[Record]:
        """Instances routers send to: ACTIVE on the node, endpoint not withdrawn."""
        return [
            r
            for key, r in self.store.items()
            if r.app == app
            and r.node in self.live
            and r.command is Command.ACTIVATE
            and self.local[r.node].get(key) is State.ACTIVE
        ]


# --------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    node: str
    fail_n: int | None = None


@dataclass(frozen=True)
class Restart:
    node: str


@dataclass(frozen=True)
class Kill:
    node: str


@dataclass(frozen=True)
class Revive:
    node: str


NodeEvent = Step | Restart | Kill | Revive


@dataclass(frozen=True)
class Leader:
    """A leader pass: plan, let ``meanwhile`` happen (stale plan), apply ``prefix``."""

    prefix: int | None = None  # crash after this many writes (None: apply all)
    meanwhile: tuple[NodeEvent, ...] = ()


@dataclass(frozen=True)
class Flap:
    """A node's lease expires and it re-registers while the leader is applying.

    The leader plans with the node gone (Remove its instances, place them
    elsewhere); before the writes land the node is back and reports, so the
    Removes lose their revision check while the Places succeed.
    """

    node: str


@dataclass(frozen=True)
class Tick:
    """A whole calm pass: the leader applies its plan, then every live node steps."""


@dataclass(frozen=True)
class Scale:
    app: str
    instances: int


@dataclass(frozen=True)
class Bump:
    """A new deployment: version + 1 (recreates a dropped app)."""

    app: str


@dataclass(frozen=True)
class Drop:
    app: str


@dataclass(frozen=True)
class Constrain:
    app: str
    constraints: tuple[tuple[str, str], ...]


Event = Tick | Leader | Flap | NodeEvent | Scale | Bump | Drop | Constrain


def run_node_event(world: World, event: NodeEvent) -> None:
    if isinstance(event, Step):
        world.step_node(event.node, event.fail_n)
    elif isinstance(event, Restart):
        world.restart(event.node)
    elif isinstance(event, Kill):
        world.kill(event.node)
    else:
        world.revive(event.node)


def run_event(world: World, event: Event, base: dict[str, DesiredApp]) -> None:
    if isinstance(event, Tick):
        world.calm_pass()
    elif isinstance(event, Flap):
        world.kill(event.node)
        actions, blueprints = world.plan()
        world.revive(event.node)
        world.apply(actions, blueprints)
    elif isinstance(event, Leader):
        actions, blueprints = world.plan()
        for inner in event.meanwhile:
            run_node_event(world, inner)
        world.apply(actions[: event.prefix], blueprints)
    elif isinstance(event, Scale | Bump | Drop | Constrain):
        change_blueprint(world, event, base)
    else:
        run_node_event(world, event)


def change_blueprint(
    world: World, event: Scale | Bump | Drop | Constrain, base: dict[str, DesiredApp]
) -> None:
    current = world.blueprints.get(event.app)
    if isinstance(event, Drop):
        world.blueprints.pop(event.app, None)
    elif isinstance(event, Bump):
        # versions only grow, also across a drop (rollback is a new deployment)
        previous = max(current.version if current else 0, base[event.app].version)
        start = current or base[event.app]
        world.blueprints[event.app] = replace(start, version=previous + 1)
        base[event.app] = world.blueprints[event.app]
    elif current is not None and isinstance(event, Scale):
        world.blueprints[event.app] = replace(current, instances=event.instances)
    elif current is not None and isinstance(event, Constrain):
        world.blueprints[event.app] = replace(current, constraints=dict(event.constraints))


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------

APPS = ["api", "web", "worker"]
STRATEGIES: list[Strategy] = ["spread", "binpack"]
ANCHOR = "n0"  # eligible for every app; alive again once faults stop
CONSTRAINTS: list[tuple[tuple[str, str], ...]] = [(), (), (("zone", "a"),), (("gpu", "yes"),)]


def roomy(
    nid: str,
    *,
    drivers: frozenset[str] = frozenset({"process"}),
    labels: dict[str, str] | None = None,
    draining: bool = False,
) -> NodeView:
    """A node with room for everything: capacity never decides in these tests."""
    return NodeView(
        id=nid,
        cpus=1000.0,
        memory_mb=1 << 30,
        drivers=drivers,
        labels=labels or {},
        draining=draining,
    )


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[NodeView], list[DesiredApp]]:
    anchor = roomy(
        ANCHOR, drivers=frozenset({"process", "container"}), labels={"zone": "a", "gpu": "yes"}
    )
    others = [
        roomy(
            f"n{i}",
            drivers=draw(st.sampled_from([frozenset({"process"}), frozenset({"container"})])),
            labels=draw(
                st.fixed_dictionaries(
                    {}, optional={"zone": st.sampled_from(["a", "b"]), "gpu": st.just("yes")}
                )
            ),
            draining=draw(st.integers(0, 4)) == 0,
        )
        for i in range(1, draw(st.integers(1, 4)) + 1)
    ]
    apps = draw(st.lists(st.sampled_from(APPS), min_size=1, unique=True))
    blueprints = [
        DesiredApp(
            app=app,
            version=draw(st.integers(1, 3)),
            instances=draw(st.integers(0, 4)),
            driver=draw(st.sampled_from(["process", "process", "container"])),
            constraints=dict(draw(st.sampled_from(CONSTRAINTS))),
            strategy=draw(st.sampled_from(STRATEGIES)),
        )
        for app in apps
    ]
    return [anchor, *others], blueprints


def node_events(node_ids: Sequence[str]) -> st.SearchStrategy[NodeEvent]:
    node = st.sampled_from(node_ids)
    return st.one_of(
        st.builds(Step, node, st.one_of(st.none(), st.none(), st.integers(0, 5))),
        st.builds(Restart, node),
        st.builds(Kill, node),
        st.builds(Revive, node),
    )


def fault_events(node_ids: Sequence[str], apps: Sequence[str]) -> st.SearchStrategy[Event]:
    """Mostly progress (so instances get far enough along to be hurt), some faults."""
    node = st.sampled_from(node_ids)
    app = st.sampled_from(apps)
    tick = st.just(Tick())
    leader = st.builds(
        Leader,
        st.one_of(st.none(), st.integers(0, 6)),
        st.lists(node_events(node_ids), max_size=2).map(tuple),
    )
    step = st.builds(Step, node, st.one_of(st.none(), st.none(), st.integers(0, 5)))
    return st.one_of(
        *[tick] * 3,
        *[leader] * 3,
        *[step] * 2,
        *[st.builds(Restart, node)] * 2,
        st.builds(Kill, node),
        st.builds(Revive, node),
        *[st.builds(Flap, node)] * 2,
        st.builds(Scale, app, st.integers(0, 4)),
        st.builds(Bump, app),
        st.builds(Drop, app),
        st.builds(Constrain, app, st.sampled_from(CONSTRAINTS)),
    )


@dataclass(frozen=True)
class Scenario:
    nodes: list[NodeView]
    blueprints: list[DesiredApp]
    warm: bool  # start from a converged cluster (all ACTIVE) rather than an empty one
    events: list[Event]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    nodes, blueprints = draw(clusters())
    ids = [n.id for n in nodes]
    warm = draw(st.integers(0, 3)) > 0
    events = draw(st.lists(fault_events(ids, [bp.app for bp in blueprints]), max_size=50))
    return Scenario(nodes, blueprints, warm, events)


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def settle(world: World, limit: int) -> int:
    """Calm passes (leader applies everything, every live node steps) until quiet.

    Returns how many passes it took (``limit + 1`` if it never got quiet).
    """
    for passes in range(1, limit + 1):
        world.calm_pass()
        if world.quiet():
            return passes
    return limit + 1


def assert_converged(world: World) -> None:
    leftover = [a for a in world.plan()[0] if not isinstance(a, Unplaceable)]
    assert leftover == [], leftover
    for key, record in world.store.items():
        assert record.node in world.live, f"{key} on a dead node"
        want = world.blueprints.get(record.app)
        assert want is not None, f"{key}: its app has no blueprint"
        assert record.version == want.version, f"{key}: old version left over"
        assert record.command is Command.ACTIVATE, key
        assert record.state is State.ACTIVE, key
        assert world.local[record.node].get(key) is State.ACTIVE, "store and node disagree"
        assert eligible(world.nodes[record.node], want), f"{key} on an ineligible node"
    for app, want in world.blueprints.items():
        mine = [r for r in world.store.values() if r.app == app]
        assert len(mine) == want.instances, (app, len(mine), want.instances)
        duplicates = [n for n, c in Counter(r.n for r in mine).items() if c > 1]
        assert duplicates == [], (app, duplicates)
    # every report a node made was accepted, except UNLOADING (tolerated, the
    # instance is deleted right after)
    assert all(new is State.UNLOADING for _, _, new in world.refused), world.refused


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


@SIM
@given(scenarios())
def test_converges_after_any_faults(scenario: Scenario) -> None:
    world = World.create(scenario.nodes, scenario.blueprints)
    if scenario.warm:
        assert settle(world, CONVERGENCE_PASSES) <= CONVERGENCE_PASSES
        assert_converged(world)
    base = {bp.app: bp for bp in scenario.blueprints}
    for event in scenario.events:
        run_event(world, event, base)
    world.revive(ANCHOR)  # faults stop; at least one node fits every app
    passes = settle(world, CONVERGENCE_PASSES)
    assert passes <= CONVERGENCE_PASSES, f"not quiet after {CONVERGENCE_PASSES} passes"
    assert_converged(world)


@SIM
@given(
    st.integers(1, 4),
    st.integers(1, 4),
    st.sampled_from(STRATEGIES),
    st.data(),
)
def test_rollout_never_stops_serving(
    node_count: int, instances: int, strategy: Strategy, data: st.DataObject
) -> None:
    """From all ACTIVE, a new version rolls out without the app ever going dark.

    Nodes stay alive and nothing fails, but the leader may crash mid-apply and
    plan from stale snapshots while nodes move, in any interleaving.
    """
    nodes = [roomy(f"n{i}") for i in range(node_count)]
    v1 = DesiredApp("api", 1, instances, strategy=strategy)
    world = World.create(nodes, [v1])
    assert settle(world, CONVERGENCE_PASSES) <= CONVERGENCE_PASSES
    assert len(world.serving("api")) == instances

    world.blueprints["api"] = replace(v1, version=2)
    ids = [n.id for n in nodes]
    steps = st.builds(Step, st.sampled_from(ids))
    events = data.draw(
        st.lists(
            st.one_of(
                steps,
                st.builds(
                    Leader,
                    st.one_of(st.none(), st.integers(0, 4)),
                    st.lists(steps, max_size=2).map(tuple),
                ),
            ),
            max_size=30,
        )
    )
    for event in events:
        if isinstance(event, Leader):
            actions, blueprints = world.plan()
            for inner in event.meanwhile:
                run_node_event(world, inner)
                assert len(world.serving("api")) >= instances
            world.apply(actions[: event.prefix], blueprints)
        else:
            run_node_event(world, event)
        assert len(world.serving("api")) >= instances, "fewer serving than before the rollout"
    assert settle(world, CONVERGENCE_PASSES) <= CONVERGENCE_PASSES
    assert_converged(world)
    assert {r.version for r in world.serving("api")} == {2}


@SIM
@given(
    st.integers(1, 3),
    st.lists(
        st.tuples(st.sampled_from(APPS), st.integers(1, 5), st.sampled_from(STRATEGIES)),
        min_size=1,
        max_size=3,
        unique_by=lambda t: t[0],
    ),
    st.data(),
)
def test_lease_flaps_leave_no_duplicate_indices(
    node_count: int, apps: list[tuple[str, int, Strategy]], data: st.DataObject
) -> None:
    """Nodes whose lease flaps while the leader replaces their instances.

    The Removes of the flapping node's instances fail, the replacements land:
    for a while two instances share an index n. The loop must end with one
    instance per index, the right number of them, and nothing else.
    """
    nodes = [roomy(f"n{i}") for i in range(node_count)]
    world = World.create(nodes, [DesiredApp(a, 1, k, strategy=s) for a, k, s in apps])
    assert settle(world, CONVERGENCE_PASSES) <= CONVERGENCE_PASSES
    ids = [n.id for n in nodes]
    events = data.draw(
        st.lists(
            st.one_of(
                st.builds(Flap, st.sampled_from(ids)),
                st.builds(Step, st.sampled_from(ids)),
                st.just(Tick()),
            ),
            max_size=8,
        )
    )
    base = dict(world.blueprints)
    for event in events:
        run_event(world, event, base)
    assert settle(world, CONVERGENCE_PASSES) <= CONVERGENCE_PASSES
    assert_converged(world)


def test_example_lease_flap_while_replacing() -> None:
    nodes = [roomy("n0"), roomy("n1")]
    world = World.create(nodes, [DesiredApp("api", 1, 2, strategy="binpack")])
    settle(world, CONVERGENCE_PASSES)
    assert sorted(world.store) == ["n0/api@1/0", "n0/api@1/1"]
    run_event(world, Flap("n0"), {})
    # both copies of both indices exist now
    assert sorted(world.store) == ["n0/api@1/0", "n0/api@1/1", "n1/api@1/0", "n1/api@1/1"]
    assert settle(world, CONVERGENCE_PASSES) <= CONVERGENCE_PASSES
    assert_converged(world)


def test_example_node_dies_mid_rollout_and_comes_back() -> None:
    nodes = [NodeView(id=f"n{i}", cpus=4, memory_mb=4096) for i in range(3)]
    world = World.create(nodes, [DesiredApp("api", 1, 3)])
    assert settle(world, CONVERGENCE_PASSES) <= CONVERGENCE_PASSES
    assert sorted(r.node for r in world.serving("api")) == ["n0", "n1", "n2"]

    world.blueprints["api"] = DesiredApp("api", 2, 3)
    world.calm_pass()  # v2 placed and loaded next to v1
    world.kill("n1")
    world.calm_pass()
    world.restart("n2")  # n2 forgets everything it ran
    world.revive("n1")
    assert settle(world, CONVERGENCE_PASSES) <= CONVERGENCE_PASSES
    assert_converged(world)
    assert sorted(r.n for r in world.serving("api")) == sorted({r.n for r in world.serving("api")})


def test_example_restart_while_deactivating_does_not_wedge() -> None:
    """The store says ACTIVE with DEACTIVATE written, the node restarted and holds nothing."""
    nodes = [NodeView(id="n0", cpus=4, memory_mb=4096)]
    world = World.create(nodes, [DesiredApp("api", 1, 2)])
    settle(world, CONVERGENCE_PASSES)
    world.blueprints["api"] = DesiredApp("api", 1, 1)
    world.leader_pass()  # one instance gets DEACTIVATE
    assert sorted(r.command for r in world.store.values()) == [
        Command.ACTIVATE,
        Command.DEACTIVATE,
    ]
    world.restart("n0")  # before it acted on DEACTIVATE
    assert settle(world, CONVERGENCE_PASSES) <= CONVERGENCE_PASSES
    assert_converged(world)

"""Rebalancing: spread an app's instances back over its eligible nodes, one move at a time.

Pure (no I/O, no clock): ``propose(view)`` looks at the cluster view the leader
already builds for the scheduler and proposes at most ONE move — one instance
of one app from a node where the app runs the most instances to one where it
runs the fewest — or none, with the reason either way.

The rule. For each app, count its ACTIVE instances on every *eligible* node
(live, not draining, with the app's driver and labels; a node without any of
its instances counts 0). The app's spread is ``max - min`` of those counts. A
move is proposed only when the spread is **2 or more**: moving one instance
from a node with ``a`` to one with ``b <= a - 2`` leaves ``a - 1`` and
``b + 1``, so the sum of squares of the counts falls by ``2(a - b) - 2 >= 2``:
every move strictly improves the spread, and a spread of 1 is left alone (no
move could improve it; moving would only flap).

Never moved:

- while any migration is in flight anywhere in the cluster (one at a time);
- an app whose rollout is running, or whose instances are not all ACTIVE and
  settled (starting, moving, or still on a draining node the scheduler is
  emptying);
- an app with the ``binpack`` strategy (it packs instances on purpose);
- a stateful app whose instance cannot be checkpointed on its node (its
  ``[checkpoint] method`` is not switched on there; ``criu`` must also be on
  at the target to restore): stateful apps move only by checkpoint/restore;
- onto a node without room for one more instance (cpu and memory).

The app with the largest spread goes first (ties by name); within it the
pair (most loaded source, least loaded target) that can make the move.
``rate_limit`` says whether the automatic step may start another move yet.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from aether.core.lifecycle import Command, State
from aether.core.scheduler import DesiredApp, InstanceView, NodeView, ineligible

__all__ = [
    "CHECKPOINT_FEATURES",
    "Move",
    "RebalanceStep",
    "RebalanceView",
    "Refusal",
    "plan_moves",
    "propose",
    "rate_limit",
]

# the node features (``NodeRecord.config``) that checkpoint a stateful instance, per method
CHECKPOINT_FEATURES = {"cooperative": "cooperative_checkpoint", "criu": "criu"}
MIN_SPREAD = 2  # max - min per node at which one move strictly improves the spread

RefusalKind = Literal["balanced", "waiting", "blocked"]


@dataclass(frozen=True, slots=True)
class RebalanceView:
    """What the decision looks at.

    ``checkpoint`` maps a node to the checkpoint methods switched on there
    (``cooperative``, ``criu``); ``methods`` a stateful app to its ``[checkpoint]
    method`` (``auto``, ``cooperative``, ``criu``); ``in_flight`` counts the open
    migrations of the whole cluster; ``only`` limits the apps considered.
    """

    apps: Sequence[DesiredApp]
    nodes: Sequence[NodeView]
    instances: Sequence[InstanceView]
    checkpoint: Mapping[str, frozenset[str]] = field(default_factory=dict)
    methods: Mapping[str, str] = field(default_factory=dict)
    in_flight: int = 0
    only: Collection[str] | None = None


@dataclass(frozen=True, slots=True)
class Move:
    """Move ``instance`` of ``app`` from ``from_node`` to ``to_node``; ``per_node`` is
    the app's ACTIVE count on each eligible node before the move."""

    app: str
    instance: str
    from_node: str
    to_node: str
    stateful: bool
    per_node: Mapping[str, int]
    reason: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why ``app`` is not moved: ``balanced`` (nothing to improve), ``waiting`` (it
    resolves by itself: a rollout, instances starting or moving) or ``blocked``."""

    app: str
    kind: RefusalKind
    reason: str
    per_node: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RebalanceStep:
    """At most one move, why, and why each other app considered is not moved."""

    move: Move | None
    reason: str
    refusals: tuple[Refusal, ...] = ()


def rate_limit(now: float, last_started: float | None, interval: float) -> str | None:
    """None when the automatic step may start a move now, else why not.

    ``interval`` 0 turns the automatic step off; otherwise one move starts per
    ``interval`` seconds at most.
    """
    if interval <= 0:
        return "the automatic rebalance step is off (rebalance_interval = 0)"
    if last_started is not None and now - last_started < interval:
        wait = interval - (now - last_started)
        return f"rate limited: one move per {interval:g} s, the next in {wait:.1f} s"
    return None


class _Room:
    """Free cpu and memory per live node, over every instance placed on it."""

    def __init__(self, nodes: Sequence[NodeView], instances: Sequence[InstanceView]) -> None:
        self.cpu = {n.id: n.cpus for n in nodes}
        self.mem = {n.id: n.memory_mb for n in nodes}
        self.total: dict[str, int] = defaultdict(int)
        for inst in instances:
            if inst.node in self.cpu:
                self.cpu[inst.node] -= inst.cpu
                self.mem[inst.node] -= inst.memory_mb
                self.total[inst.node] += 1

    def fits(self, node: str, want: DesiredApp) -> bool:
        return self.cpu[node] + 1e-9 >= want.cpu and self.mem[node] >= want.memory_mb


def _settled(inst: InstanceView, want: DesiredApp) -> bool:
    return (
        inst.version == want.version
        and inst.command is Command.ACTIVATE
        and inst.state is State.ACTIVE
        and inst.migrate_to is None
    )


def _serving(inst: InstanceView, want: DesiredApp) -> bool:
    """Still part of the app: serving, or a stateful copy stopping to checkpoint."""
    if inst.command in (Command.LOAD, Command.ACTIVATE):
        return inst.state is not State.FAILED
    return want.stateful and inst.checkpoint and inst.command is Command.DEACTIVATE


def _can_checkpoint(view: RebalanceView, app: str, source: str, target: str) -> str | None:
    """None when a stateful instance of ``app`` can move ``source`` → ``target`` by
    checkpoint/restore, else why not."""
    method = view.methods.get(app, "auto")
    wanted = ("cooperative", "criu") if method == "auto" else (method,)
    have = view.checkpoint.get(source, frozenset())
    if not any(m in have for m in wanted):
        features = " or ".join(CHECKPOINT_FEATURES.get(m, m) for m in wanted)
        return f"node {source} cannot checkpoint it ({features} is not on there)"
    if method == "criu" and "criu" not in view.checkpoint.get(target, frozenset()):
        return f"node {target} cannot restore a CRIU checkpoint (criu is not on there)"
    return None


def _counts(per_node: Mapping[str, int]) -> str:
    return ", ".join(f"{node} {count}" for node, count in sorted(per_node.items()))


def _app_move(
    view: RebalanceView,
    want: DesiredApp,
    insts: Sequence[InstanceView],
    nodes: Mapping[str, NodeView],
    room: _Room,
) -> Move | Refusal:
    """The one move that improves ``want``'s spread, or why there is none."""
    app = want.app
    eligible = sorted(nid for nid, node in nodes.items() if ineligible(node, want) is None)
    mine = [i for i in insts if _serving(i, want)]
    per_node = {nid: 0 for nid in eligible}
    for inst in mine:
        if inst.node in per_node and _settled(inst, want):
            per_node[inst.node] += 1
    if want.rollout is not None:
        return Refusal(app, "waiting", "a rollout is running", per_node)
    elsewhere = sorted({i.node for i in mine if i.node not in per_node})
    if elsewhere:
        return Refusal(
            app,
            "waiting",
            f"instances on {', '.join(elsewhere)}, which may not run it (draining or gone): "
            "the scheduler moves them first",
            per_node,
        )
    unsettled = [i for i in mine if not _settled(i, want)]
    if unsettled:
        return Refusal(
            app,
            "waiting",
            f"{len(unsettled)} instance(s) starting, stopping or moving",
            per_node,
        )
    if len(per_node) < 2:
        return Refusal(app, "balanced", "fewer than 2 eligible nodes", per_node)
    spread = max(per_node.values()) - min(per_node.values())
    if spread < MIN_SPREAD:
        counts = _counts(per_node)
        return Refusal(app, "balanced", f"spread {spread} (per node: {counts})", per_node)
    if want.strategy == "binpack":
        return Refusal(app, "blocked", "the binpack strategy packs instances on purpose", per_node)
    problems: list[str] = []
    sources = sorted(per_node, key=lambda n: (-per_node[n], n))
    targets = sorted(per_node, key=lambda n: (per_node[n], room.total[n], n))
    for source in sources:
        for target in targets:
            if per_node[source] - per_node[target] < MIN_SPREAD:
                break
            if not room.fits(target, want):
                problems.append(f"node {target} has no room ({want.cpu} cpu, {want.memory_mb} MB)")
                continue
            if want.stateful and (why := _can_checkpoint(view, app, source, target)):
                problems.append(why)
                continue
            inst = max((i for i in mine if i.node == source), key=lambda i: (i.n, i.key))
            how = "by checkpoint/restore" if want.stateful else "start new, then stop old"
            return Move(
                app=app,
                instance=inst.key,
                from_node=source,
                to_node=target,
                stateful=want.stateful,
                per_node=per_node,
                reason=(
                    f"spread {spread} ≥ {MIN_SPREAD} (per node: {_counts(per_node)}): "
                    f"one instance from {source} ({per_node[source]}) to {target} "
                    f"({per_node[target]}), {how}"
                ),
            )
    detail = "; ".join(dict.fromkeys(problems))
    return Refusal(
        app, "blocked", f"spread {spread} (per node: {_counts(per_node)}) but {detail}", per_node
    )


def propose(view: RebalanceView) -> RebalanceStep:
    """At most one move that strictly improves one app's spread (see the module's rule)."""
    nodes = {node.id: node for node in view.nodes}
    room = _Room(view.nodes, view.instances)
    by_app: dict[str, list[InstanceView]] = defaultdict(list)
    for inst in view.instances:
        by_app[inst.app].append(inst)
    moves: list[Move] = []
    refusals: list[Refusal] = []
    for want in sorted(view.apps, key=lambda a: a.app):
        if view.only is not None and want.app not in view.only:
            continue
        found = _app_move(view, want, by_app.get(want.app, []), nodes, room)
        if isinstance(found, Move):
            moves.append(found)
        else:
            refusals.append(found)
    if view.in_flight:
        reason = f"{view.in_flight} migration(s) in flight: one move at a time, cluster-wide"
        return RebalanceStep(None, reason, tuple(refusals))
    if not moves:
        blocked = [r for r in refusals if r.kind != "balanced"]
        reason = (
            "nothing to move: " + "; ".join(f"{r.app}: {r.reason}" for r in blocked)
            if blocked
            else f"nothing to move: every app's spread is below {MIN_SPREAD}"
        )
        return RebalanceStep(None, reason, tuple(refusals))
    spread = {m.app: max(m.per_node.values()) - min(m.per_node.values()) for m in moves}
    best = min(moves, key=lambda m: (-spread[m.app], m.app))
    return RebalanceStep(best, best.reason, tuple(refusals))


def plan_moves(view: RebalanceView, limit: int = 100) -> list[Move]:
    """The moves ``propose`` would make one after another (each as if the one before
    had finished), up to ``limit``: what a rebalance will do, for an operator to see."""
    moves: list[Move] = []
    current = replace(view, in_flight=0)
    while len(moves) < limit:
        move = propose(current).move
        if move is None:
            break
        moves.append(move)
        current = replace(
            current,
            instances=[
                replace(i, node=move.to_node) if i.key == move.instance else i
                for i in current.instances
            ],
        )
    return moves

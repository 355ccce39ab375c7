"""Scheduler planning: ``plan(blueprints, nodes, instances) -> actions``.

A pure function of a snapshot (no I/O, no clock). The leader reads the state
store, calls ``plan``, and applies the actions in compare-and-swap
transactions, so an action computed from a stale snapshot fails instead of
doing harm, and the next pass sees the truth again (level-triggered).

Per app it converges on: exactly ``instances`` serving copies of the
blueprint's version on eligible, non-draining, live nodes. Instances of older
versions, or on nodes no longer eligible (draining, missing driver, label
mismatch), are *superseded*: they keep serving until the
current version has all its instances ACTIVE, then retire (start new before
stopping old). Instances on nodes whose lease expired are removed and placed
again elsewhere.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from aether.core.lifecycle import Command, State, leader_next_command
from aether.core.rollout import RolloutInstance, rollout_step
from aether.model.app import RolloutSpec

__all__ = [
    "Action",
    "AwaitingPromotion",
    "DesiredApp",
    "InstanceView",
    "NodeView",
    "Place",
    "Remove",
    "RolloutDone",
    "RolloutFailed",
    "SetCommand",
    "Unplaceable",
    "plan",
]

Strategy = Literal["spread", "binpack"]


@dataclass(frozen=True, slots=True)
class NodeView:
    id: str
    cpus: float
    memory_mb: int
    drivers: frozenset[str] = frozenset({"process"})
    labels: Mapping[str, str] = field(default_factory=dict)
    draining: bool = False


@dataclass(frozen=True, slots=True)
class DesiredApp:
    app: str
    version: int
    instances: int
    driver: str = "process"
    constraints: Mapping[str, str] = field(default_factory=dict)
    cpu: float = 0.1
    memory_mb: int = 64
    strategy: Strategy = "spread"
    # set while a rollout replaces an older version (see core.rollout)
    rollout: RolloutSpec | None = None
    rollout_started_at: float = 0.0
    promoted: bool = False
    rollout_failures: int = 0
    # after repeated failures no new instance is placed before this time (backoff)
    hold_until: float = 0.0


@dataclass(frozen=True, slots=True)
class InstanceView:
    key: str
    node: str
    app: str
    version: int
    n: int
    command: Command
    state: State | None
    mod_revision: int = 0
    cpu: float = 0.1
    memory_mb: int = 64
    placed_at: float = 0.0
    active_since: float | None = None


@dataclass(frozen=True, slots=True)
class Place:
    """Create instance ``n`` of ``app@version`` on ``node`` with command LOAD."""

    node: str
    app: str
    version: int
    n: int


@dataclass(frozen=True, slots=True)
class SetCommand:
    """Write ``command`` to an existing instance, if it is still at ``mod_revision``."""

    key: str
    command: Command
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Remove:
    """Delete an instance key whose node is gone (its lease expired)."""

    key: str
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Unplaceable:
    """``count`` instances of ``app`` fit on no node; ``reason`` says why."""

    app: str
    count: int
    reason: str


@dataclass(frozen=True, slots=True)
class RolloutDone:
    """Every new instance is healthy and the old ones are gone."""

    app: str


@dataclass(frozen=True, slots=True)
class RolloutFailed:
    """The rollout failed; ``revert`` when the app asked for auto_revert."""

    app: str
    reason: str
    revert: bool


@dataclass(frozen=True, slots=True)
class AwaitingPromotion:
    """Canary instances are healthy; the rollout waits for ``aether promote``."""

    app: str


Action = Place | SetCommand | Remove | Unplaceable | RolloutDone | RolloutFailed | AwaitingPromotion

_SERVING = (Command.LOAD, Command.ACTIVATE)


class _Capacity:
    """Free resources and instance counts per node, updated as we place."""

    def __init__(self, nodes: Iterable[NodeView], instances: Iterable[InstanceView]) -> None:
        self.cpu: dict[str, float] = {}
        self.mem: dict[str, int] = {}
        self.total: dict[str, int] = defaultdict(int)
        self.per_app: dict[tuple[str, str], int] = defaultdict(int)
        for node in nodes:
            self.cpu[node.id] = node.cpus
            self.mem[node.id] = node.memory_mb
        for inst in instances:
            if inst.node in self.cpu:
                self.cpu[inst.node] -= inst.cpu
                self.mem[inst.node] -= inst.memory_mb
                self.total[inst.node] += 1
                self.per_app[(inst.node, inst.app)] += 1

    def fits(self, node: str, want: DesiredApp) -> bool:
        return self.cpu[node] + 1e-9 >= want.cpu and self.mem[node] >= want.memory_mb

    def take(self, node: str, want: DesiredApp) -> None:
        self.cpu[node] -= want.cpu
        self.mem[node] -= want.memory_mb
        self.total[node] += 1
        self.per_app[(node, want.app)] += 1


def _eligible(node: NodeView, want: DesiredApp) -> str | None:
    """None if ``node`` may run ``want``, else why not."""
    if node.draining:
        return "draining"
    if want.driver not in node.drivers:
        return f"no {want.driver} driver"
    for label, value in want.constraints.items():
        if node.labels.get(label) != value:
            return f"label {label}!={value}"
    return None


def _place(
    want: DesiredApp,
    count: int,
    nodes: Sequence[NodeView],
    capacity: _Capacity,
    used_n: set[int],
) -> tuple[list[Place], Unplaceable | None]:
    reasons: dict[str, int] = defaultdict(int)
    candidates: list[str] = []
    for node in nodes:
        why = _eligible(node, want)
        if why is None:
            candidates.append(node.id)
        else:
            reasons[why] += 1
    sign = 1 if want.strategy == "spread" else -1
    heap = [
        (sign * capacity.per_app[(nid, want.app)], sign * capacity.total[nid], nid)
        for nid in candidates
    ]
    heapq.heapify(heap)
    placed: list[Place] = []
    next_n = 0
    while len(placed) < count and heap:
        _, _, nid = heapq.heappop(heap)
        if not capacity.fits(nid, want):
            reasons["insufficient cpu or memory"] += 1
            continue
        capacity.take(nid, want)
        while next_n in used_n:
            next_n += 1
        used_n.add(next_n)
        placed.append(Place(nid, want.app, want.version, next_n))
        heapq.heappush(
            heap, (sign * capacity.per_app[(nid, want.app)], sign * capacity.total[nid], nid)
        )
    missing = count - len(placed)
    if missing <= 0:
        return placed, None
    if not nodes:
        reason = "no live nodes"
    else:
        reason = ", ".join(f"{n} node(s): {why}" for why, n in sorted(reasons.items()))
    return placed, Unplaceable(want.app, missing, reason or "no eligible node")


def _retire(inst: InstanceView) -> SetCommand | None:
    command = leader_next_command(inst.command, inst.state, wanted=False)
    if command is None or command is inst.command:
        return None
    return SetCommand(inst.key, command, inst.mod_revision)


def _excess_order(inst: InstanceView, per_node: Mapping[str, int]) -> tuple[int, int, int]:
    """Sort key: retire non-ACTIVE first, then from the most crowded node, then newest."""
    return (inst.state is State.ACTIVE, -per_node[inst.node], -inst.n)


def _rollout_view(inst: InstanceView) -> RolloutInstance:
    return RolloutInstance(inst.key, inst.state, inst.command, inst.placed_at, inst.active_since)


def plan(
    blueprints: Sequence[DesiredApp],
    nodes: Sequence[NodeView],
    instances: Sequence[InstanceView],
    *,
    now: float = 0.0,
) -> list[Action]:
    """The actions that move ``instances`` toward ``blueprints`` on ``nodes``.

    ``now`` (seconds, the caller's clock) matters only to rollouts.
    """
    alive = {node.id: node for node in nodes}
    actions: list[Action] = []
    by_app: dict[str, list[InstanceView]] = defaultdict(list)
    for inst in instances:
        if inst.node not in alive:
            actions.append(Remove(inst.key, inst.mod_revision))
        else:
            by_app[inst.app].append(inst)
    capacity = _Capacity(nodes, (i for i in instances if i.node in alive))
    desired = {bp.app: bp for bp in blueprints}
    ordered_nodes = sorted(nodes, key=lambda n: n.id)

    for app in sorted(set(by_app) | set(desired)):
        insts = by_app.get(app, [])
        want = desired.get(app)
        if want is None:
            actions.extend(a for a in map(_retire, insts) if a is not None)
            continue
        current: list[InstanceView] = []
        superseded: list[InstanceView] = []
        for inst in insts:
            if inst.command not in _SERVING:
                action = _retire(inst)  # already retiring: move it along
                if action is not None:
                    actions.append(action)
            elif inst.state is State.FAILED:
                actions.append(SetCommand(inst.key, Command.UNLOAD, inst.mod_revision))
            elif inst.version == want.version and _eligible(alive[inst.node], want) is None:
                current.append(inst)
            else:
                superseded.append(inst)

        # One copy per index n. Two exist when a node's lease expired and it came
        # back while its instances were being replaced (the Remove lost its
        # revision check, the Place landed): keep one, preferring an ACTIVE one,
        # and supersede the other, so it is retired once the rest is ACTIVE.
        keep: dict[int, InstanceView] = {}
        for inst in sorted(current, key=lambda i: (i.state is not State.ACTIVE, i.key)):
            keep.setdefault(inst.n, inst)
        superseded.extend(inst for inst in current if keep[inst.n] is not inst)
        current = [inst for inst in current if keep[inst.n] is inst]

        if len(current) > want.instances:
            per_node: dict[str, int] = defaultdict(int)
            for inst in current:
                per_node[inst.node] += 1
            current.sort(key=lambda i: _excess_order(i, per_node))
            for inst in current[: len(current) - want.instances]:
                action = _retire(inst)
                if action is not None:
                    actions.append(action)
            current = current[len(current) - want.instances :]

        for inst in current:
            command = leader_next_command(inst.command, inst.state, wanted=True)
            if command is not None:
                actions.append(SetCommand(inst.key, command, inst.mod_revision))

        missing = want.instances - len(current)
        if want.rollout is not None:
            old = [i for i in superseded if i.version != want.version]
            step = rollout_step(
                want.rollout,
                want.instances,
                [_rollout_view(i) for i in current],
                [_rollout_view(i) for i in old],
                now=now,
                started_at=want.rollout_started_at,
                promoted=want.promoted,
                failures=want.rollout_failures,
            )
            if step.failed is not None:
                actions.append(RolloutFailed(app, step.failed, want.rollout.auto_revert))
                continue
            if step.done:
                actions.append(RolloutDone(app))
            if step.waiting_for_promotion:
                actions.append(AwaitingPromotion(app))
            missing = min(missing, step.place)
            retiring = set(step.retire)
            by_key = {i.key: i for i in old}
            actions.extend(
                a for a in (_retire(by_key[k]) for k in sorted(retiring)) if a is not None
            )
            superseded = [i for i in superseded if i.version == want.version]
        if missing > 0 and now < want.hold_until:
            missing = 0  # failing repeatedly: wait for the backoff before placing again
        if missing > 0:
            used_n = {inst.n for inst in insts}
            placed, unplaceable = _place(want, missing, ordered_nodes, capacity, used_n)
            actions.extend(placed)
            if unplaceable is not None:
                actions.append(unplaceable)

        active = sum(1 for inst in current if inst.state is State.ACTIVE)
        if active >= want.instances:
            actions.extend(a for a in map(_retire, superseded) if a is not None)
    return actions

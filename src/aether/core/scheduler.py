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

Migration. An instance with ``migrate_to`` set is asked to move ("" = to any
other node, else to that node; the target is preferred while it is live,
eligible and has room, otherwise any other eligible node is taken):

- stateless app: it is superseded; its replacement is placed first (on the
  target), and it retires once every current instance is ACTIVE — DEACTIVATE
  removes its endpoint in the same transaction, so no request is lost;
- stateful app (``DesiredApp.stateful``): the state must leave before the copy
  that carries it starts. A running instance gets DEACTIVATE with
  ``checkpoint``; the node stops it, stores a snapshot and reports LOADED with
  its digest; only then is the replacement placed with ``restore_from`` that
  snapshot, and the old instance is unloaded once the replacement exists. An
  instance that is not running (never started, or LOADED) holds no state of
  its own: its replacement restores what it was restored from. A current
  instance of a stateful app on a node that is no longer eligible (draining)
  moves the same way: drain = migrate everything.

Every other new instance of a stateful app (scale up, node lost, a failed
replacement) restores the app's latest snapshot (``DesiredApp.latest_snapshot``),
so the state survives a node that died without a checkpoint — as of the last
checkpoint.
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
    "check_target",
    "ineligible",
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
    rollout_given_up: str | None = None  # core.rollout.give_up's verdict: the rollout fails
    # after repeated failures no new instance is placed before this time (backoff)
    hold_until: float = 0.0
    # stateful apps move by checkpoint/restore; new instances restore the latest snapshot
    stateful: bool = False
    latest_snapshot: str | None = None


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
    migrate_to: str | None = None  # asked to move: "" = anywhere else, else that node
    migration_id: str = ""
    checkpoint: bool = False  # told to checkpoint when it stops
    snapshot: str | None = None  # the snapshot its node stored at that checkpoint
    restore_from: str | None = None  # what it was started from
    restore: str | None = None  # its migration's replacement restores this snapshot


@dataclass(frozen=True, slots=True)
class Place:
    """Create instance ``n`` of ``app@version`` on ``node`` with command LOAD.

    ``restore_from`` names a snapshot the node restores before it starts the
    instance; ``migration_id`` links a replacement to the migration it serves.
    """

    node: str
    app: str
    version: int
    n: int
    restore_from: str | None = None
    migration_id: str = ""


@dataclass(frozen=True, slots=True)
class SetCommand:
    """Write ``command`` to an existing instance, if it is still at ``mod_revision``.

    ``checkpoint`` (with DEACTIVATE) tells the node to snapshot the state as it stops.
    """

    key: str
    command: Command
    mod_revision: int
    checkpoint: bool = False


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


def ineligible(node: NodeView, want: DesiredApp) -> str | None:
    """None if ``node`` may run ``want``, else why not."""
    if node.draining:
        return "draining"
    if want.driver not in node.drivers:
        return f"no {want.driver} driver"
    for label, value in want.constraints.items():
        if node.labels.get(label) != value:
            return f"label {label}!={value}"
    return None


@dataclass(frozen=True, slots=True)
class _Slot:
    """One instance to place. A migration's replacement prefers its target and
    never lands on the node it leaves; a stateful one restores a snapshot."""

    prefer: str | None = None
    avoid: str | None = None
    restore_from: str | None = None
    migration_id: str = ""


@dataclass
class _Candidates:
    """The nodes eligible for one app, and why the others are not."""

    eligible: list[str]
    reasons: dict[str, int]
    by_id: dict[str, NodeView]


def _candidates(want: DesiredApp, nodes: Sequence[NodeView]) -> _Candidates:
    reasons: dict[str, int] = defaultdict(int)
    eligible: list[str] = []
    for node in nodes:
        why = ineligible(node, want)
        if why is None:
            eligible.append(node.id)
        else:
            reasons[why] += 1
    return _Candidates(eligible, reasons, {node.id: node for node in nodes})


def _rank(want: DesiredApp, capacity: _Capacity, nid: str) -> tuple[int, int, str]:
    sign = 1 if want.strategy == "spread" else -1
    return (sign * capacity.per_app[(nid, want.app)], sign * capacity.total[nid], nid)


def _target_problem(
    target: str, want: DesiredApp, cands: _Candidates, capacity: _Capacity
) -> str | None:
    node = cands.by_id.get(target)
    if node is None:
        return "not live"
    why = ineligible(node, want)
    if why is not None:
        return why
    if not capacity.fits(target, want):
        return "insufficient cpu or memory"
    return None


def _destination(
    want: DesiredApp, slot: _Slot, cands: _Candidates, capacity: _Capacity
) -> tuple[str | None, str]:
    """Where a migration's replacement goes (the target if it can, else the best
    other eligible node with room), or None and why not."""
    note = ""
    if slot.prefer is not None:
        why = _target_problem(slot.prefer, want, cands, capacity)
        if why is None and slot.prefer != slot.avoid:
            return slot.prefer, ""
        note = f"migration target {slot.prefer}: {why or 'is the node it leaves'}"
    fits = [n for n in cands.eligible if n != slot.avoid and capacity.fits(n, want)]
    if fits:
        return min(fits, key=lambda n: _rank(want, capacity, n)), note
    if slot.avoid is not None:
        note = (note + "; " if note else "") + f"no eligible node with room besides {slot.avoid}"
    return None, note


def _place(
    want: DesiredApp,
    slots: Sequence[_Slot],
    nodes: Sequence[NodeView],
    capacity: _Capacity,
    used_n: set[int],
) -> tuple[list[Place], Unplaceable | None]:
    cands = _candidates(want, nodes)
    reasons = cands.reasons
    notes: list[str] = []
    placed: list[Place] = []
    next_n = 0

    def put(nid: str, slot: _Slot) -> None:
        nonlocal next_n
        capacity.take(nid, want)
        while next_n in used_n:
            next_n += 1
        used_n.add(next_n)
        placed.append(
            Place(nid, want.app, want.version, next_n, slot.restore_from, slot.migration_id)
        )

    # migrations first: they name where they may and may not go
    plain: list[_Slot] = []
    for slot in slots:
        if slot.prefer is None and slot.avoid is None:
            plain.append(slot)
            continue
        nid, note = _destination(want, slot, cands, capacity)
        if note:
            notes.append(note)
        if nid is not None:
            put(nid, slot)

    heap = [_rank(want, capacity, nid) for nid in cands.eligible]
    heapq.heapify(heap)
    done = 0
    while done < len(plain) and heap:
        _, _, nid = heapq.heappop(heap)
        if not capacity.fits(nid, want):
            reasons["insufficient cpu or memory"] += 1
            continue
        put(nid, plain[done])
        done += 1
        heapq.heappush(heap, _rank(want, capacity, nid))
    missing = len(slots) - len(placed)
    if missing <= 0:
        return placed, None
    if not nodes:
        reason = "no live nodes"
    else:
        reason = ", ".join(
            [f"{n} node(s): {why}" for why, n in sorted(reasons.items())] + sorted(set(notes))
        )
    return placed, Unplaceable(want.app, missing, reason or "no eligible node")


def check_target(
    target: str,
    want: DesiredApp,
    nodes: Sequence[NodeView],
    instances: Sequence[InstanceView],
) -> str | None:
    """Why node ``target`` cannot take one more instance of ``want`` now, or None."""
    live = {node.id for node in nodes}
    capacity = _Capacity(nodes, (i for i in instances if i.node in live))
    why = _target_problem(target, want, _candidates(want, nodes), capacity)
    if why is None:
        return None
    if why == "insufficient cpu or memory":
        return (
            f"node {target!r} has not enough free cpu or memory "
            f"({want.cpu} cpu and {want.memory_mb} MB needed)"
        )
    return f"node {target!r} is {why}" if why == "not live" else f"node {target!r}: {why}"


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
        checkpointing: list[InstanceView] = []  # stateful: stopping to checkpoint its state
        captured: list[InstanceView] = []  # stateful: state captured, awaiting a replacement
        cands: _Candidates | None = None
        stuck: list[str] = []  # stateful instances asked to move that have nowhere to go
        for inst in insts:
            if (
                want.stateful
                and inst.checkpoint
                and inst.command is Command.DEACTIVATE
                and inst.state is not State.FAILED
            ):
                (captured if inst.state is State.LOADED else checkpointing).append(inst)
            elif inst.command not in _SERVING:
                action = _retire(inst)  # already retiring: move it along
                if action is not None:
                    actions.append(action)
            elif inst.state is State.FAILED:
                actions.append(SetCommand(inst.key, Command.UNLOAD, inst.mod_revision))
            elif (
                want.stateful
                and inst.version == want.version
                and (inst.migrate_to is not None or ineligible(alive[inst.node], want) is not None)
            ):
                if inst.state not in (State.ACTIVE, State.ACTIVATING):
                    captured.append(inst)  # nothing runs: no state beyond what it restored
                    continue
                # stop it to checkpoint only when its state has somewhere to go
                cands = cands or _candidates(want, ordered_nodes)
                slot = _Slot(prefer=inst.migrate_to or None, avoid=inst.node)
                where, note = _destination(want, slot, cands, capacity)
                if where is None:
                    stuck.append(f"cannot move {inst.key}: {note}")
                    current.append(inst)  # keeps serving where it is
                    continue
                actions.append(
                    SetCommand(inst.key, Command.DEACTIVATE, inst.mod_revision, checkpoint=True)
                )
                checkpointing.append(inst)
            elif (
                inst.version == want.version
                and inst.migrate_to is None
                and ineligible(alive[inst.node], want) is None
            ):
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

        # A captured instance holds its slot until its replacement is placed, then
        # unloads; one that is not needed any more (scaled down) unloads at once.
        needed = want.instances - len(current) - len(checkpointing)
        captured.sort(key=lambda i: i.key)
        waiting = captured[: max(0, needed)]
        for inst in captured:
            if inst.command in _SERVING or inst not in waiting:
                action = _retire(inst)
                if action is not None:
                    actions.append(action)
        slots = [
            _Slot(
                prefer=inst.migrate_to or None,
                avoid=inst.node,
                restore_from=(
                    inst.restore or inst.snapshot or inst.restore_from or want.latest_snapshot
                ),
                migration_id=inst.migration_id,
            )
            for inst in waiting
        ]
        replaced = {i.migration_id for i in insts if i.migration_id and i.migrate_to is None}
        slots.extend(
            _Slot(prefer=inst.migrate_to or None, avoid=inst.node, migration_id=inst.migration_id)
            for inst in sorted(superseded, key=lambda i: i.key)
            if inst.migrate_to is not None and inst.migration_id not in replaced
        )
        missing = needed
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
                given_up=want.rollout_given_up,
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
            plain = _Slot(restore_from=want.latest_snapshot if want.stateful else None)
            chosen = (slots + [plain] * missing)[:missing]
            placed, unplaceable = _place(want, chosen, ordered_nodes, capacity, used_n)
            actions.extend(placed)
            if unplaceable is not None:
                stuck.insert(0, unplaceable.reason)
                actions.append(
                    Unplaceable(app, unplaceable.count + len(stuck) - 1, "; ".join(stuck))
                )
                stuck = []
        if stuck:
            actions.append(Unplaceable(app, len(stuck), "; ".join(stuck)))

        active = sum(1 for inst in current if inst.state is State.ACTIVE)
        if active >= want.instances:
            actions.extend(a for a in map(_retire, superseded) if a is not None)
    return actions

"""The leader's reconcile loop: observe the cluster, plan, apply, record.

Level-triggered: any change under ``nodes/``, ``blueprints/`` or
``instances/`` wakes the loop, and it also runs every ``reconcile_interval``;
each pass re-reads the whole truth, so a missed event or a crash at any line
is repaired by the next pass. Every write is fenced by the leadership epoch,
so a deposed leader's writes are refused. A pass's writes go in batches of
many actions per transaction (``aether.store.batch``); an action whose
condition fails is left out (and not recorded), and a refused fence ends the term.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from aether import tracing
from aether.core.lifecycle import Command, State
from aether.core.rollout import give_up
from aether.core.scheduler import (
    Action,
    AwaitingPromotion,
    Place,
    Remove,
    RolloutDone,
    RolloutFailed,
    SetCommand,
    Unplaceable,
    plan,
)
from aether.errors import NotFoundError
from aether.model.cluster import Blueprint, InstanceRecord, instance_endpoint_keys, instance_key
from aether.model.names import split_cluster_name
from aether.server.context import ServerContext
from aether.server.services.cluster import ClusterSnapshot, dump, read_snapshot
from aether.server.services.migrations import latest_snapshots
from aether.server.services.migrations import track as track_migrations
from aether.server.services.recovery import lost_note
from aether.store.base import (
    CompactedError,
    Compare,
    Delete,
    Kv,
    Op,
    Put,
    StateStore,
    StoreError,
)
from aether.store.batch import Write, apply_fenced
from aether.store.election import LeaderElection, Leadership

__all__ = [
    "FAILURES_BEFORE_GIVING_UP",
    "IN_FLIGHT",
    "Leader",
    "Outcome",
    "action_write",
    "apply_action",
    "apply_actions",
    "failover_line",
]

log = logging.getLogger("aether.leader")

FAILURES_BEFORE_GIVING_UP = 3
_WATCHED = ("nodes/", "blueprints/", "instances/")
# batches of a pass sent at once (disjoint keys): +30 % placements/s on 3-member etcd
IN_FLIGHT = 4


def action_write(snap: ClusterSnapshot, action: Action) -> Write | None:
    """The store write of one planned action, guarded by the instance's revision.

    None for an action that writes nothing to the state store (Unplaceable,
    rollout outcomes). The leader adds its fence to every write.
    """
    if isinstance(action, Place):
        bp, _ = snap.blueprints[action.app]
        record = InstanceRecord(
            app=action.app,
            version=action.version,
            n=action.n,
            node=action.node,
            tenant=bp.tenant,
            deployment_id=bp.deployment_id,
            digest=bp.digest,
            spec=bp.spec,
            command=Command.LOAD,
            request_id=uuid.uuid4().hex,
            traceparent=bp.traceparent,
            placed_at=time.time(),
            restore_from=action.restore_from,
            migration_id=action.migration_id,
        )
        key = instance_key(action.node, action.app, action.version, action.n)
        return Write((Compare(key, "create_revision", "==", 0),), (Put(key, dump(record)),))
    if isinstance(action, SetCommand):
        record, _ = snap.instances[action.key]
        change: dict[str, object] = {"command": action.command, "request_id": uuid.uuid4().hex}
        if action.checkpoint:
            change["checkpoint"] = True  # the node snapshots the state as it stops
        updated = record.model_copy(update=change)
        ops: list[Op] = [Put(action.key, dump(updated))]
        if action.command is Command.UNLOAD:
            ops.extend(Delete(ep_key) for ep_key in instance_endpoint_keys(record))
        # A DEACTIVATE leaves the endpoint: the node's DEACTIVATING report withdraws it,
        # and the node waits for every router to confirm that revision (a graceful drain)
        return Write((Compare(action.key, "mod_revision", "==", action.mod_revision),), tuple(ops))
    if isinstance(action, Remove):
        record, _ = snap.instances[action.key]
        return Write(
            (Compare(action.key, "mod_revision", "==", action.mod_revision),),
            (
                Delete(action.key),
                *(Delete(ep_key) for ep_key in instance_endpoint_keys(record)),
            ),
        )
    return None


async def apply_action(
    store: StateStore, snap: ClusterSnapshot, action: Action, fence: Compare
) -> None:
    """Write one planned action, guarded by the fence and the instance's revision."""
    write = action_write(snap, action)
    if write is not None:
        await store.txn([fence, *write.compare], list(write.ops))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What :func:`apply_actions` did: the actions applied, and whether the fence failed."""

    applied: list[Action]
    deposed: bool
    transactions: int


async def apply_actions(
    store: StateStore,
    snap: ClusterSnapshot,
    actions: Sequence[Action],
    fence: Compare,
    *,
    in_flight: int = IN_FLIGHT,
) -> Outcome:
    """Write a pass's actions in fenced batches (``aether.store.batch``), in plan order.

    Each action is written exactly as :func:`apply_action` writes it (same keys,
    values, fence and condition); one whose condition fails is left out, the
    others are applied. ``applied`` keeps the actions that write nothing.
    If the fence fails the leader is deposed: the rest is not tried.
    ``in_flight``: batches of disjoint keys sent at once (``apply_fenced``).
    """
    writes: list[Write] = []
    positions: list[int] = []
    for i, action in enumerate(actions):
        write = action_write(snap, action)
        if write is not None:
            writes.append(write)
            positions.append(i)
    started = time.time_ns()
    result = await apply_fenced(store, fence, writes, in_flight=in_flight)
    refused = {positions[j] for j, ok in enumerate(result.applied) if not ok}
    applied = [a for i, a in enumerate(actions) if i not in refused]
    if tracing.enabled():
        _trace_placements(snap, applied, started)
    return Outcome(applied, result.fenced, result.transactions)


def _trace_placements(snap: ClusterSnapshot, applied: Sequence[Action], started: int) -> None:
    """A span per placement, in the trace of the deployment that asked for it."""
    for action in applied:
        if isinstance(action, Place):
            bp, _ = snap.blueprints[action.app]
            tracing.record(
                f"leader: place {split_cluster_name(action.app)[0]}",
                parent=bp.traceparent,
                start_ns=started,
                attributes={
                    "aether.node": action.node,
                    "aether.version": action.version,
                    "aether.instance": action.n,
                },
            )


# A loop only the leader runs (telemetry aggregation, risk engine, controller,
# advisers): started when this server is elected, cancelled when it loses the leadership.
LeaderLoop = Callable[[Leadership], Coroutine[Any, Any, None]]


def failover_line(me: str, epoch: int, previous: str | None) -> str:
    """The log line of an election: who was elected, in which epoch, after whom."""
    after = (
        f"took over from {previous}"
        if previous and previous != me
        else "no leader before"
        if not previous
        else "re-elected"
    )
    return f"leader elected: {me} (epoch {epoch}); {after}"


class Leader:
    def __init__(self, ctx: ServerContext, loops: Sequence[LeaderLoop] = ()) -> None:
        self.ctx = ctx
        self.loops = list(loops)
        self.election = LeaderElection(
            ctx.store, key="leader", candidate=ctx.server_id, ttl=ctx.settings.lease_ttl
        )
        self._healthy: set[str] = set()
        self._failed_seen: set[tuple[str, int]] = set()
        self._failures: dict[str, int] = defaultdict(int)
        self._ever_active: set[str] = set()  # deployments with an instance seen ACTIVE
        self._verdicts: dict[str, str] = {}  # deployment → why it failed for certain
        self._given_up: set[str] = set()
        self._unplaceable: dict[str, str] = {}
        self._awaiting: set[str] = set()
        self._holds: dict[str, float] = {}
        self._rollout_failed: set[str] = set()
        self.passes = 0
        self.leading = False  # this server holds the leadership now

    async def run(self) -> None:
        me = self.ctx.server_id
        while True:
            try:
                leadership = await self.election.campaign()
            except StoreError as exc:
                log.warning("election failed (%s); retrying", exc)
                await asyncio.sleep(1)
                continue
            log.warning(failover_line(me, leadership.epoch, leadership.previous))
            why = "resigned"
            try:
                await self._lead(leadership)
                why = "its lease ended or another server holds the key"
            except StoreError as exc:
                why = f"lost the state store ({exc})"
            finally:
                with contextlib.suppress(StoreError):
                    await self.election.resign()
            log.warning("leader lost: %s no longer leads (epoch %d): %s", me, leadership.epoch, why)

    async def _lead(self, leadership: Leadership) -> None:
        wake = asyncio.Event()
        wake.set()
        watcher = asyncio.create_task(self._watch(wake))
        loops = [
            asyncio.create_task(loop(leadership), name=getattr(loop, "__qualname__", "loop"))
            for loop in self.loops
        ]
        self.leading = True
        try:
            while not leadership.lost.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.ctx.settings.reconcile_interval):
                        await wake.wait()
                wake.clear()
                try:
                    await self.reconcile(leadership)
                except StoreError:
                    raise
                except Exception:
                    log.exception("reconcile pass failed; retrying on the next pass")
        finally:
            self.leading = False
            for task in (watcher, *loops):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _watch(self, wake: asyncio.Event) -> None:
        while True:
            start = await self.ctx.store.revision() + 1
            try:
                async for event in self.ctx.store.watch("", start):
                    if event.kv.key.startswith(_WATCHED):
                        wake.set()
            except CompactedError:
                wake.set()
            except StoreError:
                await asyncio.sleep(0.5)

    async def reconcile(self, leadership: Leadership) -> list[Action]:
        """One pass: read, plan, apply. Returns the actions it applied."""
        started = time.time_ns()
        snap = await read_snapshot(self.ctx.store)
        failed = await self._observe_failures(snap)
        actions = plan(
            snap.desired(
                self._failures,
                self._holds,
                await latest_snapshots(self.ctx, snap),
                self._verdicts,
            ),
            snap.node_views(),
            snap.instance_views(),
            now=time.time(),
        )
        outcome = await apply_actions(self.ctx.store, snap, actions, leadership.fence())
        if outcome.deposed:
            # a successor leads: it records what it sees; this term is over
            log.warning("the store refused epoch %d's writes: deposed", leadership.epoch)
            leadership.lost.set()
            return outcome.applied
        await self._record(snap, outcome.applied, failed)
        await track_migrations(self.ctx, outcome.applied)
        self.passes += 1
        if outcome.applied and tracing.enabled():  # a pass that changed something
            tracing.record(
                "leader: reconcile pass",
                parent=None,
                start_ns=started,
                attributes={
                    "aether.epoch": leadership.epoch,
                    "aether.actions": len(outcome.applied),
                    "aether.transactions": outcome.transactions,
                },
            )
        return outcome.applied

    async def _observe_failures(self, snap: ClusterSnapshot) -> list[InstanceRecord]:
        """Count the instances newly FAILED and judge their deployments (``give_up``).

        Runs before planning, so a deployment that failed for certain places no
        replacement and its rollout fails in the same pass.
        """
        for record, _ in snap.instances.values():
            if record.state is State.ACTIVE:
                self._ever_active.add(record.deployment_id)
        failed: list[InstanceRecord] = []
        for record, kv in snap.instances.values():
            if (
                record.state is not State.FAILED
                or record.command is Command.UNLOAD  # acted on: the leader saw it already
                or (record.key, kv.mod_revision) in self._failed_seen
            ):
                continue
            self._failed_seen.add((record.key, kv.mod_revision))
            failed.append(record)
            deployment_id = record.deployment_id
            self._failures[deployment_id] += 1
            if deployment_id not in self._ever_active and await self._came_up(record):
                self._ever_active.add(deployment_id)  # seen by an earlier leader
            verdict = give_up(
                self._failures[deployment_id],
                record.message,
                instance=f"instance {record.n} on {record.node}",
                ever_active=deployment_id in self._ever_active,
            )
            if verdict is not None:
                self._verdicts.setdefault(deployment_id, verdict)
                # keep trying, but back off: 1 s, 2 s, 4 s, ... 60 s
                excess = max(0, self._failures[deployment_id] - FAILURES_BEFORE_GIVING_UP)
                self._holds[deployment_id] = time.time() + min(2.0**excess, 60.0)
        return failed

    async def _came_up(self, record: InstanceRecord) -> bool:
        """The records say the deployment was healthy once (before this leader's time)."""
        try:
            deployment = await self.ctx.records.get_deployment(record.tenant, record.deployment_id)
        except NotFoundError:
            return False
        return deployment.status in ("active", "superseded")

    async def _record(
        self, snap: ClusterSnapshot, actions: list[Action], failed: list[InstanceRecord]
    ) -> None:
        """Deployment status and events, each written once."""
        records = self.ctx.records
        for action in actions:
            if isinstance(action, Place):
                bp, _ = snap.blueprints[action.app]
                await records.add_event(
                    bp.deployment_id,
                    "placed",
                    f"instance {action.n} of v{action.version} placed on node {action.node}",
                )
            elif isinstance(action, Remove):
                record, _ = snap.instances[action.key]
                note = ""
                if record.spec.stateful:
                    latest = (await latest_snapshots(self.ctx, snap)).get(record.app)
                    note = await lost_note(self.ctx, record, latest, time.time())
                await records.add_event(
                    record.deployment_id,
                    "node_lost",
                    f"instance {record.n} lost with node {record.node}; placing it elsewhere"
                    + note,
                )
            elif isinstance(action, Unplaceable):
                bp, _ = snap.blueprints[action.app]
                message = f"{action.count} instance(s) cannot be placed: {action.reason}"
                if self._unplaceable.get(bp.deployment_id) != message:
                    self._unplaceable[bp.deployment_id] = message
                    await records.add_event(bp.deployment_id, "unplaceable", message)

        for record in failed:
            deployment_id = record.deployment_id
            await records.add_event(
                deployment_id,
                "instance_failed",
                f"instance {record.n} on {record.node} failed: {record.message}",
            )
            verdict = self._verdicts.get(deployment_id)
            if (
                verdict is None
                or deployment_id in self._given_up
                or deployment_id in self._healthy
                or _in_rollout(snap, deployment_id)  # the rollout fails and reverts
            ):
                continue
            self._given_up.add(deployment_id)
            await records.add_event(deployment_id, "failed", verdict)
            if await records.set_deployment_status(deployment_id, "failed"):
                self.ctx.metrics.deployments_failed.inc()

        for action in actions:
            if isinstance(action, RolloutDone | RolloutFailed | AwaitingPromotion):
                await self._rollout_outcome(snap, action)

        for bp, _ in snap.blueprints.values():
            if (
                bp.deployment_id in self._healthy
                or bp.deployment_id in self._given_up
                or bp.deployment_id in self._rollout_failed
                or bp.previous is not None  # a running rollout is healthy when it is done
            ):
                continue
            if snap.active_count(bp.app, bp.version) >= bp.instances:
                self._healthy.add(bp.deployment_id)
                if await records.set_deployment_status(bp.deployment_id, "active"):
                    self.ctx.metrics.deployments_succeeded.inc()
                    await records.add_event(
                        bp.deployment_id,
                        "healthy",
                        f"all {bp.instances} instance(s) of v{bp.version} are ACTIVE",
                    )
                await self._supersede_others(bp.tenant, bp.app, bp.deployment_id)

    async def _rollout_outcome(
        self, snap: ClusterSnapshot, action: RolloutDone | RolloutFailed | AwaitingPromotion
    ) -> None:
        """Finish, revert or pause a rollout; each outcome is written once."""
        entry = snap.blueprints.get(action.app)
        if entry is None:
            return
        bp, kv = entry
        records = self.ctx.records
        if isinstance(action, AwaitingPromotion):
            if bp.deployment_id not in self._awaiting:
                self._awaiting.add(bp.deployment_id)
                await records.add_event(
                    bp.deployment_id,
                    "awaiting_promotion",
                    f"canary instances of v{bp.version} are healthy; "
                    f"run `aether promote {split_cluster_name(bp.app)[0]}`",
                )
            return
        if isinstance(action, RolloutDone):
            done = bp.model_copy(update={"previous": None, "promoted": False})
            result = await self.ctx.store.txn(
                [Compare(kv.key, "mod_revision", "==", kv.mod_revision)], [Put(kv.key, dump(done))]
            )
            if result.succeeded:
                await records.add_event(
                    bp.deployment_id, "rollout_done", f"v{bp.version} replaced the previous version"
                )
            return
        if bp.deployment_id in self._rollout_failed:
            return
        self._rollout_failed.add(bp.deployment_id)
        await records.add_event(bp.deployment_id, "rollout_failed", action.reason)
        # the events first: whoever sees the status "failed" finds its cause and outcome
        await self._revert(bp, kv, action)
        if await records.set_deployment_status(bp.deployment_id, "failed"):
            self.ctx.metrics.deployments_failed.inc()

    async def _revert(self, bp: Blueprint, kv: Kv, action: RolloutFailed) -> None:
        """Serve the previous deployment again (``auto_revert``), or say the rollout paused."""
        records = self.ctx.records
        previous = bp.previous
        if not action.revert or previous is None:
            await records.add_event(
                bp.deployment_id,
                "rollout_paused",
                "the previous version keeps serving; deploy a fix or `aether rollback`",
            )
            return
        reverted = bp.model_copy(
            update={
                "deployment_id": previous.deployment_id,
                "version": previous.version,
                "digest": previous.digest,
                "spec": previous.spec,
                "previous": None,
                "promoted": False,
            }
        )
        result = await self.ctx.store.txn(
            [Compare(kv.key, "mod_revision", "==", kv.mod_revision)], [Put(kv.key, dump(reverted))]
        )
        if result.succeeded:
            await records.add_event(
                bp.deployment_id, "reverted", f"reverted to v{previous.version} (auto_revert)"
            )
            await records.add_event(
                previous.deployment_id,
                "restored",
                f"serving again after v{bp.version} failed: {action.reason}",
            )
            await records.set_deployment_status(previous.deployment_id, "active")

    async def _supersede_others(self, tenant_id: str, name: str, current: str) -> None:
        """Supersede the other live deployments of the app (``name``: its cluster name)."""
        records = self.ctx.records
        app = await records.get_app(tenant_id, split_cluster_name(name)[0])
        for deployment in await records.list_deployments(tenant_id, app):
            if deployment.id != current and deployment.status in ("active", "pending"):
                await records.set_deployment_status(deployment.id, "superseded")
                await records.add_event(deployment.id, "superseded", "a newer deployment is live")


def _in_rollout(snap: ClusterSnapshot, deployment_id: str) -> bool:
    """The deployment is replacing a previous one (its failure is the rollout's)."""
    return any(
        bp.deployment_id == deployment_id and bp.previous is not None
        for bp, _ in snap.blueprints.values()
    )

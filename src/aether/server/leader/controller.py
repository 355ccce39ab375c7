"""The controller on the leader: observe, decide (layer 1 or an adviser), guard, apply, record.

Every ``controller_interval`` seconds the leader reads the cluster (state
store), the telemetry window and the risk assessments into a plain
:class:`~aether.core.controller.ControllerSnapshot`, lets the pure decision
tree (:func:`aether.core.controller.evaluate`) decide, and applies what it
returns:

- **scale** - compare-and-swap on ``blueprints/{app}``, fenced by the
  leadership (a deposed leader's late write fails); the scheduler does the rest;
- **drain / undrain** - the node's flag (:func:`aether.server.services.drain.set_draining`);
  the scheduler moves instances off a draining node.

Advisers (:mod:`aether.server.leader.advisers`) hand their proposals to
:meth:`Controller.consider`, which passes them through the guardrails
(:mod:`aether.core.guardrails`) before applying any.

Before any decision is applied, the cluster's guard plugins
(:mod:`aether.plugins`) judge it (:func:`aether.core.guardrails.plugin_guards`):
one refusal holds it back, recorded as refused with the plugin's reason; a
plugin that traps, runs out of fuel or memory, passes its deadline or answers
garbage is skipped, its reason in the decision's ``inputs["plugins"]``.

Every applied decision and every adviser proposal is recorded in the
``decisions`` table with its layer, inputs, action, reason and outcome;
repeated no-ops and repeated refusals are recorded once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from aether.core.autoscale import entry_value
from aether.core.controller import (
    DRAINED_BY_ADVISER,
    AppState,
    ControllerPolicy,
    ControllerSnapshot,
    NodeState,
    evaluate,
    track_low_since,
)
from aether.core.guardrails import (
    AppLimits,
    GuardrailView,
    NodeLimits,
    Verdict,
    check_all,
    plugin_guards,
)
from aether.core.plugin_abi import encode, guard_input, guard_verdict
from aether.errors import AetherError, ConflictError
from aether.model.cluster import Blueprint
from aether.model.decisions import AutoscaleSpec, Decision, DecisionOut, Proposal
from aether.model.risk import RiskAssessment
from aether.model.telemetry import AppSample, ClusterSample
from aether.plugins.host import PluginHost
from aether.server.context import ServerContext
from aether.server.leader.observation import Observation
from aether.server.services.audit import record_controller_action
from aether.server.services.cluster import (
    fence_holds,
    read_snapshot,
    update_blueprint,
)
from aether.server.services.drain import set_draining
from aether.server.services.migrations import drain_node
from aether.server.settings import ServerSettings
from aether.store.base import Compare
from aether.store.election import Leadership
from aether.store.records.schema import DecisionRow

__all__ = [
    "Controller",
    "RiskSource",
    "TelemetrySource",
    "decision_out",
    "metric_value",
    "sample_value",
]

log = logging.getLogger("aether.controller")

PRUNE_EVERY = 3600.0  # seconds between deleting decisions older than the retention
HISTORY_SECONDS = 3600.0  # applied scale decisions read back at election (cool-downs)


class TelemetrySource(Protocol):
    """What the controller reads from the telemetry hub (``ctx.telemetry``)."""

    def window(self, seconds: float | None) -> list[ClusterSample]: ...

    def latest(self) -> ClusterSample | None: ...


class RiskSource(Protocol):
    """What the controller reads from the risk engine."""

    def assessments(self) -> dict[str, RiskAssessment]: ...


def metric_value(spec: AutoscaleSpec, sample: AppSample, desired: int) -> float | None:
    """The metric per instance of ``desired`` instances, from one aggregated second.

    CPU and open calls add up over instances, so they are spread over the
    blueprint's count (instances still starting then count as capacity already
    bought); latency is taken as measured. None when no instance reported.
    """
    if sample.instances <= 0:
        return None
    if spec.metric == "latency":
        return sample.latency_ms
    per_instance = (
        sample.cpu_per_instance if spec.metric == "cpu" else sample.in_flight_per_instance
    )
    return per_instance * sample.instances / max(desired, 1)


def sample_value(
    spec: AutoscaleSpec, sample: ClusterSample, app: str, desired: int
) -> float | None:
    """The figure ``spec`` scales ``app`` by in one second: the app's (``metric_value``) or,
    with ``spec.entry``, that entry point's (``core.autoscale.entry_value``); None when
    the second has none."""
    if spec.entry is None:
        app_sample = sample.apps.get(app)
        return metric_value(spec, app_sample, desired) if app_sample is not None else None
    entry = sample.slices.get(app, {}).get(spec.entry)
    return entry_value(spec, entry, desired) if entry is not None else None


def decision_out(row: DecisionRow) -> DecisionOut:
    return DecisionOut.model_validate(row, from_attributes=True)


class _Stale(Exception):
    """The blueprint changed since the decision was made: the next pass decides again."""


class Controller:
    def __init__(
        self,
        ctx: ServerContext,
        *,
        telemetry: TelemetrySource | None = None,
        risk: RiskSource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx = ctx
        self.telemetry = telemetry  # None: ctx.telemetry
        self.risk = risk  # None: no risk assessments (the server passes its risk engine)
        self.clock = clock
        self.policy = ControllerPolicy(undrain_after=ctx.settings.controller_undrain_after)
        self.passes = 0
        self._lock = asyncio.Lock()  # layer 1 and the advisers apply one at a time
        self._last_up: dict[str, float] = {}
        self._last_down: dict[str, float] = {}
        self._low_since: dict[str, float] = {}
        self._once: dict[tuple[int, str, str], str] = {}  # refusals and no-ops recorded once
        self._pruned_at = 0.0
        self._wake = asyncio.Event()
        self.guards = PluginHost(ctx.records, "guard")

    @property
    def settings(self) -> ServerSettings:
        return self.ctx.settings

    def wake(self) -> None:
        """Run the next pass now (the risk engine calls this when a node's status changes)."""
        self._wake.set()

    # -- sources ------------------------------------------------------------------------

    def telemetry_source(self) -> TelemetrySource | None:
        source: TelemetrySource | None = self.telemetry or self.ctx.telemetry
        return source

    def risk_source(self) -> RiskSource | None:
        return self.risk

    # -- the loop ---------------------------------------------------------------------

    async def run(self, leadership: Leadership) -> None:
        """The leader loop: one layer-1 pass per ``controller_interval``."""
        interval = self.ctx.settings.controller_interval
        try:
            await self.load_history()
        except Exception:
            log.exception("reading recent decisions failed; starting without cool-down history")
        while not leadership.lost.is_set():
            try:
                await self.step(leadership)
                await self._prune()
            except Exception:
                log.exception("controller pass failed; trying again")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()

    async def load_history(self) -> None:
        """Cool-downs survive a change of leader: read recent applied scale decisions back."""
        now = self.clock()
        rows = await self.ctx.records.list_decisions(
            None, kind="scale", outcome="applied", since=now - HISTORY_SECONDS, limit=1000
        )
        for row in reversed(rows):  # oldest first, so the newest wins
            direction = row.action.get("direction")
            if direction == "up":
                self._last_up[row.target] = max(self._last_up.get(row.target, 0.0), row.ts)
            elif direction == "down":
                self._last_down[row.target] = max(self._last_down.get(row.target, 0.0), row.ts)

    async def _prune(self) -> None:
        now = self.clock()
        if now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        await self.ctx.records.delete_decisions_before(now - self.ctx.settings.decisions_retention)

    # -- observing ----------------------------------------------------------------------

    def last_change(self, app: str) -> float | None:
        times = [t for t in (self._last_up.get(app), self._last_down.get(app)) if t is not None]
        return max(times) if times else None

    async def observe(self, now: float | None = None) -> Observation:
        now = self.clock() if now is None else now
        cluster = await read_snapshot(self.ctx.store)
        specs = [bp.spec.autoscale for bp, _ in cluster.blueprints.values() if bp.spec.autoscale]
        seconds = max(
            (max(s.window, s.scale_down_cooldown, s.scale_down_window) + 2.0 for s in specs),
            default=30.0,
        )
        hub = self.telemetry_source()
        samples = list(hub.window(seconds)) if hub is not None else []
        risk = self.risk_source()
        assessments = dict(risk.assessments()) if risk is not None else {}
        self._low_since = track_low_since(
            self._low_since, assessments, now, self.policy.risk_max_age
        )
        latest = samples[-1] if samples else None
        apps = []
        for name, (bp, _) in sorted(cluster.blueprints.items()):
            spec = bp.spec.autoscale
            series: list[tuple[float, float]] = []
            if spec is not None:
                for sample in samples:
                    value = sample_value(spec, sample, name, bp.instances)
                    if value is not None:
                        series.append((sample.ts, value))
            reporting = None
            if spec is not None and spec.entry is not None:
                entry = latest.slices.get(name, {}).get(spec.entry) if latest else None
                if entry is not None and entry.instances:
                    reporting = entry.instances
            elif latest is not None and name in latest.apps:
                reporting = latest.apps[name].instances
            apps.append(
                AppState(
                    app=name,
                    instances=bp.instances,
                    autoscale=spec,
                    series=tuple(series),
                    reporting=reporting,
                    rolling_out=bp.previous is not None,
                    last_up=self._last_up.get(name),
                    last_down=self._last_down.get(name),
                    tenant=bp.tenant,
                )
            )
        nodes = [
            NodeState(
                node=node_id,
                draining=record.draining,
                drained_by=record.drained_by,
                risk=assessments.get(node_id),
                low_since=self._low_since.get(node_id),
            )
            for node_id, (record, _) in sorted(cluster.nodes.items())
        ]
        last_change = {a.app: t for a in apps if (t := self.last_change(a.app)) is not None}
        return Observation(
            now=now,
            cluster=cluster,
            samples=samples,
            assessments=assessments,
            snapshot=ControllerSnapshot(now=now, apps=apps, nodes=nodes),
            last_change=last_change,
        )

    def guardrail_view(self, obs: Observation) -> GuardrailView:
        settings = self.ctx.settings
        return GuardrailView(
            now=obs.now,
            apps={
                a.app: AppLimits(
                    app=a.app,
                    instances=a.instances,
                    autoscale=a.autoscale,
                    rolling_out=a.rolling_out,
                    last_change=obs.last_change.get(a.app),
                    tenant=a.tenant,
                )
                for a in obs.snapshot.apps
            },
            nodes={
                n.node: NodeLimits(
                    node=n.node,
                    draining=n.draining,
                    drained_by=n.drained_by,
                    status=n.risk.status if n.risk is not None else None,
                )
                for n in obs.snapshot.nodes
            },
            max_instances=settings.controller_max_instances,
            min_interval=settings.controller_min_interval,
        )

    # -- layer 1 --------------------------------------------------------------------------

    async def step(self, leadership: Leadership, now: float | None = None) -> list[DecisionOut]:
        """One layer-1 pass; the decisions it recorded."""
        async with self._lock:
            obs = await self.observe(now)
            decisions = evaluate(obs.snapshot, self.policy)
            decisions = await self._guarded(decisions, obs.now)
            out: list[DecisionOut] = []
            refused_now: set[tuple[int, str, str]] = set()
            for decision in decisions:
                if decision.refusal:
                    key: tuple[int, str, str] = (1, decision.kind, decision.target)
                    refused_now.add(key)
                    recorded = await self.record_once(
                        key, decision, "refused", decision.refusal, obs.now
                    )
                    if recorded is not None:
                        out.append(recorded)
                    continue
                recorded = await self._apply(decision, leadership, obs)
                if recorded is not None:
                    out.append(recorded)
            for key in [k for k in self._once if k[0] == 1 and k not in refused_now]:
                del self._once[key]  # resolved: a later refusal is news again
            self.passes += 1
            return out

    # -- layers 2 and 3 -------------------------------------------------------------------

    async def consider(
        self,
        layer: int,
        proposals: Sequence[Proposal],
        leadership: Leadership,
        *,
        inputs: dict[str, object] | None = None,
        now: float | None = None,
    ) -> list[tuple[Verdict, DecisionOut | None]]:
        """Guard and apply an adviser's proposals; each verdict with what was recorded."""
        async with self._lock:
            obs = await self.observe(now)
            verdicts = check_all(proposals, layer, self.guardrail_view(obs))
            verdicts = await self._guarded_verdicts(verdicts, obs.now)
            out: list[tuple[Verdict, DecisionOut | None]] = []
            for verdict in verdicts:
                decision = verdict.decision
                if inputs:
                    decision = decision.model_copy(update={"inputs": {**decision.inputs, **inputs}})
                key: tuple[int, str, str] = (layer, decision.kind, decision.target)
                if verdict.noop:
                    recorded = await self.record_once(
                        key, decision, "refused", verdict.detail, obs.now
                    )
                elif not verdict.accepted:
                    self._once.pop(key, None)
                    recorded = await self.record(decision, "refused", verdict.detail, obs.now)
                else:
                    self._once.pop(key, None)
                    recorded = await self._apply(decision, leadership, obs, always=True)
                out.append((verdict, recorded))
            return out

    # -- guard plugins ------------------------------------------------------------------

    async def guard(self, decisions: Sequence[Decision], now: float) -> list[tuple[Decision, str]]:
        """Each decision after the guard plugins, with their refusal ("" if none); in order."""
        plugins = await self.guards.load() if decisions else []
        if not plugins:
            return [(d, "") for d in decisions]
        batch = [
            (
                plugin,
                encode(guard_input(d.layer, d.kind, d.target, d.action, d.reason, d.tenant, now)),
            )
            for d in decisions
            for plugin in plugins
        ]
        outcomes = await self.guards.evaluate(batch)
        n = len(plugins)
        out = []
        for i, decision in enumerate(decisions):
            verdicts = [guard_verdict(o) for o in outcomes[i * n : (i + 1) * n]]
            for v in verdicts:
                if v.skipped is not None:
                    log.warning("guard plugin %s skipped: %s", v.name, v.skipped)
            out.append(plugin_guards(decision, verdicts))
        return out

    async def _guarded(self, decisions: Sequence[Decision], now: float) -> list[Decision]:
        """Layer 1's decisions with a plugin's refusal set (those already refused as they are)."""
        judged = iter(await self.guard([d for d in decisions if not d.refusal], now))
        out = []
        for decision in decisions:
            if decision.refusal:
                out.append(decision)
                continue
            guarded, refusal = next(judged)
            out.append(guarded.model_copy(update={"refusal": refusal}) if refusal else guarded)
        return out

    async def _guarded_verdicts(self, verdicts: Sequence[Verdict], now: float) -> list[Verdict]:
        """The accepted proposals judged by the guard plugins too (refused ones as they are)."""
        due = [i for i, v in enumerate(verdicts) if v.accepted and not v.noop]
        judged = dict(
            zip(due, await self.guard([verdicts[i].decision for i in due], now), strict=True)
        )
        out = []
        for i, verdict in enumerate(verdicts):
            if i not in judged:
                out.append(verdict)
                continue
            decision, refusal = judged[i]
            reasons = (refusal,) if refusal else ()
            out.append(replace(verdict, decision=decision, accepted=not refusal, reasons=reasons))
        return out

    # -- applying and recording -------------------------------------------------------------

    async def _apply(
        self, decision: Decision, leadership: Leadership, obs: Observation, *, always: bool = False
    ) -> DecisionOut | None:
        """Apply one decision and record the outcome; None when it was left for later."""
        fence = leadership.fence()
        try:
            if decision.kind == "scale":
                await self._scale(decision, fence)
            elif decision.kind in ("drain", "undrain"):
                draining = decision.kind == "drain"
                await set_draining(
                    self.ctx,
                    decision.target,
                    draining,
                    reason=decision.reason if draining else "",
                    by=str(decision.action.get("drained_by", DRAINED_BY_ADVISER)),
                    fence=fence,
                )
                if draining:
                    moving = await self._migrate_off(decision.target, decision.reason)
                    action = {**decision.action, "migrations": moving}
                    decision = decision.model_copy(update={"action": action})
            else:
                raise ValueError(f"cannot apply a {decision.kind!r} decision")
        except _Stale as exc:
            if not always:
                return None
            return await self.record(decision, "failed", str(exc), obs.now)
        except ConflictError as exc:
            if leadership.lost.is_set() or not await fence_holds(self.ctx.store, fence):
                log.info("not applying %s %s: %s", decision.kind, decision.target, exc.message)
                return None
            return await self.record(decision, "failed", exc.message, obs.now)
        except (AetherError, ValueError) as exc:
            return await self.record(decision, "failed", str(exc), obs.now)
        if decision.kind == "scale":
            direction = decision.action.get("direction")
            if direction == "up":
                self._last_up[decision.target] = obs.now
            elif direction == "down":
                self._last_down[decision.target] = obs.now
        return await self.record(decision, "applied", "", obs.now)

    async def _migrate_off(self, node: str, reason: str) -> list[str]:
        """Turn the moves off a drained node into tracked migrations (checkpointed where
        the app is stateful); the planner moves the instances off it either way."""
        try:
            return [str(row.id) for row in await drain_node(self.ctx, node, reason)]
        except Exception:
            log.exception("requesting migrations off %s failed; the planner moves them", node)
            return []

    async def _scale(self, decision: Decision, fence: Compare) -> None:
        expected = decision.action.get("from")
        desired = int(decision.action["instances"])

        def change(bp: Blueprint) -> Blueprint:
            if expected is not None and bp.instances != expected:
                raise _Stale(f"the blueprint has {bp.instances} instances now, not {expected}")
            if bp.previous is not None:
                raise _Stale("a rollout started meanwhile")
            return bp.model_copy(update={"instances": desired})

        old, _ = await update_blueprint(self.ctx.store, decision.target, change, fence=fence)
        layer = {1: "autoscaled", 2: "advised", 3: "advised"}.get(decision.layer, "scaled")
        await self.ctx.records.add_event(
            old.deployment_id,
            layer,
            f"instances {old.instances} → {desired} (layer {decision.layer}): {decision.reason}",
        )

    async def record(
        self, decision: Decision, outcome: str, detail: str, now: float
    ) -> DecisionOut:
        row = await self.ctx.records.record_decision(decision, outcome, detail, now)
        await record_controller_action(self.ctx, decision, row, outcome, detail)
        log.info(
            "decision layer %d %s %s: %s (%s%s)",
            decision.layer,
            decision.kind,
            decision.target,
            decision.reason,
            outcome,
            f": {detail}" if detail else "",
        )
        return decision_out(row)

    async def record_once(
        self,
        key: tuple[int, str, str],
        decision: Decision,
        outcome: str,
        detail: str,
        now: float,
    ) -> DecisionOut | None:
        signature = f"{outcome}|{detail}|{decision.action}"
        if self._once.get(key) == signature:
            return None
        self._once[key] = signature
        return await self.record(decision, outcome, detail, now)

    def forget(self, key: tuple[int, str, str]) -> None:
        """The next ``record_once`` under ``key`` is recorded whatever it says."""
        self._once.pop(key, None)

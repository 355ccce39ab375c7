"""The leader's rebalance step: spread instances back, one move at a time.

Every second (at most) the step reads the cluster and asks the pure decision
(:func:`aether.core.rebalance.propose`) for one move; it starts it only when
no migration is in flight anywhere and the last move it started is at least
``rebalance_interval`` seconds old (:func:`aether.core.rebalance.rate_limit`);
a new leader waits one interval before its first move.
The move is an ordinary migration; it and every app held back for good (a
stateful app that cannot be checkpointed, no room, binpack) are recorded as
controller decisions of kind ``rebalance`` (a refusal once until it changes).
``rebalance_interval`` 0 turns the step off; ``aether rebalance`` still works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aether.core.rebalance import Refusal, propose, rate_limit
from aether.errors import AetherError
from aether.model.decisions import Decision
from aether.server.context import ServerContext
from aether.server.services.rebalance import observe, record_decision, start_move
from aether.store.election import Leadership

__all__ = ["Rebalancer"]

log = logging.getLogger("aether.rebalance")

TICK = 1.0  # seconds between two looks, at most


class Rebalancer:
    def __init__(
        self,
        ctx: ServerContext,
        *,
        clock: Callable[[], float] = time.time,
        interval: float | None = None,
    ) -> None:
        self.ctx = ctx
        self.clock = clock
        self.interval = ctx.settings.rebalance_interval if interval is None else interval
        self.last_started: float | None = None
        self._refused: dict[str, str] = {}  # app → the refusal recorded last

    async def run(self, leadership: Leadership) -> None:
        """The leader loop: one step per tick, until the leadership is lost."""
        if self.interval <= 0:
            return
        # a new leader lets the cluster settle for one interval before its first move
        self.last_started = self.clock()
        await self._load_last()
        while not leadership.lost.is_set():
            try:
                await self.step(leadership)
            except Exception:
                log.exception("rebalance step failed; trying again")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.interval, TICK)):
                    await leadership.lost.wait()

    async def _load_last(self) -> None:
        """The rate limit survives a change of leader: the newest move recorded."""
        rows = await self.ctx.records.list_decisions(
            None, kind="rebalance", outcome="applied", limit=1
        )
        if rows:
            self.last_started = max(self.last_started or 0.0, rows[0].ts)

    async def step(self, leadership: Leadership, now: float | None = None) -> str:
        """One look: start at most one move; what happened, in words."""
        now = self.clock() if now is None else now
        limited = rate_limit(now, self.last_started, self.interval)
        if limited is not None:
            return limited
        seen = await observe(self.ctx)
        step = propose(seen.view)
        await self._record_refusals(step.refusals, seen.tenants, now)
        move = step.move
        if move is None or leadership.lost.is_set():
            return step.reason
        self.last_started = now  # a failed start counts too: no hammering
        try:
            row = await start_move(self.ctx, move, seen.tenants[move.app], "automatic", now)
        except AetherError as exc:
            log.warning("rebalance of %s failed to start: %s", move.app, exc.message)
            return f"failed: {exc.message}"
        log.info("rebalance: migration %s of %s: %s", row.id, move.instance, move.reason)
        return move.reason

    async def _record_refusals(
        self, refusals: tuple[Refusal, ...], tenants: dict[str, str], now: float
    ) -> None:
        """Record each app held back for good once, until its reason changes."""
        blocked = {r.app: r for r in refusals if r.kind == "blocked"}
        for app in [a for a in self._refused if a not in blocked]:
            del self._refused[app]  # resolved: a later refusal is news again
        for app, refusal in blocked.items():
            if self._refused.get(app) == refusal.reason:
                continue
            self._refused[app] = refusal.reason
            decision = Decision(
                layer=1,
                kind="rebalance",
                target=app,
                inputs={"per_node": dict(refusal.per_node), "requested_by": "automatic"},
                reason="the app's instances are unevenly spread",
                tenant=tenants.get(app),
            )
            await record_decision(self.ctx, decision, "refused", refusal.reason, now)

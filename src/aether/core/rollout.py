"""Rollout strategies: how a new version replaces the serving one, step by step.

A pure function of the instances of one app, the strategy and the time
(``now`` is an argument; nothing here reads a clock). The scheduler asks it,
on every pass, how many new instances to place and which old ones to retire.

- ``rolling``: at most ``max_parallel`` new instances are in flight (placed but
  not yet healthy); each old instance retires only once a new one has been
  ACTIVE for ``min_healthy_time``. The app never has fewer healthy instances
  than desired, so a rolling deploy of a healthy version loses no request.
- ``canary``: ``canary`` new instances start next to all the old ones; once
  they are healthy the rollout is promoted (``auto_promote``) or waits for
  ``aether promote``, then continues as rolling.
- ``blue-green``: every new instance starts next to the old ones; the old ones
  retire together once all new ones are healthy.

A rollout fails when a new instance is not ACTIVE within ``healthy_deadline``
of its placement, when it is not complete within ``progress_deadline`` of its
start, or when ``give_up`` says the new version failed for certain; the leader
then reverts to the previous deployment if ``auto_revert`` is set.

``give_up`` is also the rule of a first deployment (nothing to revert to): the
leader marks it failed, and the CLI stops waiting, as soon as the failure is
certain — at the first instance that does not start (it exits before it is
healthy, or never passes its health check) while no instance of the
deployment has ever been ACTIVE, since the same artifact and spec will fail the
same way; otherwise (it did come up once, or the failure was the node's, such
as a download) after ``FAILURES_TO_FAIL`` instance failures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aether.core.failures import is_start_failure
from aether.core.lifecycle import Command, State
from aether.model.app import RolloutSpec

__all__ = ["FAILURES_TO_FAIL", "RolloutInstance", "RolloutStep", "give_up", "rollout_step"]

FAILURES_TO_FAIL = 3


def give_up(failures: int, last_message: str, *, instance: str, ever_active: bool) -> str | None:
    """Why a deployment has failed for certain, or None while it may still come up.

    ``failures`` counts its failed instances; ``last_message`` is the latest one's
    cause as its node reported it (worded by ``core.failures``) and ``instance``
    names it (``instance 0 on node-1``); ``ever_active``: any of its instances was
    ever ACTIVE.
    """
    if failures <= 0:
        return None
    cause = f"{instance}: {last_message}"
    if failures >= FAILURES_TO_FAIL:
        return f"{failures} instance failures; last: {cause}"
    if not ever_active and is_start_failure(last_message):
        return cause
    return None


@dataclass(frozen=True, slots=True)
class RolloutInstance:
    key: str
    state: State | None
    command: Command
    placed_at: float = 0.0
    active_since: float | None = None

    @property
    def serving(self) -> bool:
        return self.command in (Command.LOAD, Command.ACTIVATE) and self.state is not State.FAILED


@dataclass(frozen=True, slots=True)
class RolloutStep:
    place: int = 0
    retire: tuple[str, ...] = ()
    done: bool = False
    failed: str | None = None
    waiting_for_promotion: bool = False


def _healthy(inst: RolloutInstance, spec: RolloutSpec, now: float) -> bool:
    return (
        inst.state is State.ACTIVE
        and inst.active_since is not None
        and now - inst.active_since >= spec.min_healthy_time
    )


def _retire_order(inst: RolloutInstance) -> tuple[bool, str]:
    """Retire instances that do not serve yet first, so serving capacity stays."""
    return (inst.state is State.ACTIVE, inst.key)


def rollout_step(
    spec: RolloutSpec,
    desired: int,
    new: Sequence[RolloutInstance],
    old: Sequence[RolloutInstance],
    *,
    now: float,
    started_at: float,
    promoted: bool,
    failures: int = 0,
    given_up: str | None = None,
) -> RolloutStep:
    """The next step of replacing ``old`` with ``desired`` instances of the new version.

    ``new`` are the new version's serving instances (failed ones excluded);
    ``old`` the previous versions' serving instances; ``failures`` counts new
    instances that failed during this rollout; ``given_up`` is ``give_up``'s
    verdict on them (the rollout fails with it).
    """
    healthy = [i for i in new if _healthy(i, spec, now)]
    in_flight = [i for i in new if not _healthy(i, spec, now)]
    old_serving = sorted((i for i in old if i.serving), key=_retire_order)

    if given_up is not None:
        return RolloutStep(failed=given_up)
    if failures >= FAILURES_TO_FAIL:
        return RolloutStep(failed=f"{failures} new instance(s) failed")
    for inst in in_flight:
        if inst.state is not State.ACTIVE and now - inst.placed_at > spec.healthy_deadline:
            return RolloutStep(
                failed=f"instance {inst.key} not healthy within {spec.healthy_deadline:g}s"
            )
    if now - started_at > spec.progress_deadline and (len(healthy) < desired or old_serving):
        return RolloutStep(failed=f"rollout not complete within {spec.progress_deadline:g}s")

    if len(healthy) >= desired and not old_serving:
        return RolloutStep(done=True)

    missing = max(0, desired - len(new))
    if spec.strategy == "blue-green":
        retire = [i.key for i in old_serving] if len(healthy) >= desired else []
        return RolloutStep(place=missing, retire=tuple(retire))

    if spec.strategy == "canary":
        canaries = min(spec.canary, desired)
        ready = len(healthy) >= canaries
        if not (promoted or (spec.auto_promote and ready)):
            return RolloutStep(
                place=max(0, canaries - len(new)),
                waiting_for_promotion=ready,
            )

    # rolling (and a promoted canary): bounded in-flight, retire one old per healthy new
    room = max(0, spec.max_parallel - len(in_flight))
    place = min(missing, room)
    keep_old = max(0, desired - len(healthy))
    retire = [i.key for i in old_serving[: max(0, len(old_serving) - keep_old)]]
    return RolloutStep(place=place, retire=tuple(retire))

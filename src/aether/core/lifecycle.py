"""The instance lifecycle: the one place its transitions are defined.

::

    LOAD → LOADING → LOADED → ACTIVATE → ACTIVATING → ACTIVE
      any step may fail → FAILED
    ACTIVE → DEACTIVATE → DEACTIVATING → LOADED → UNLOAD → UNLOADING → (gone)

Commands (upper-case verbs) are written by the leader; states (the -ING steps
and the results LOADED, ACTIVE, FAILED) are reported by the node. Both sides ask
this module what to do next, so they cannot disagree about the machine.
"""

from __future__ import annotations

import enum

from aether.model.lifecycle import Command, State

__all__ = [
    "Command",
    "NodeStep",
    "State",
    "can_report",
    "leader_next_command",
    "node_step",
]


class NodeStep(enum.StrEnum):
    """What a node does for one instance, given the command and its local state."""

    NOTHING = "nothing"
    LOAD = "load"  # fetch, verify and extract the artifact → LOADED
    ACTIVATE = "activate"  # start and health-check → ACTIVE
    DEACTIVATE = "deactivate"  # stop → LOADED
    UNLOAD = "unload"  # remove files, then the instance is gone


# Which state a node may report after which (None = nothing known yet).
_REPORTS: dict[State | None, frozenset[State]] = {
    None: frozenset({State.LOADING, State.FAILED, State.UNLOADING}),
    State.LOADING: frozenset({State.LOADED, State.FAILED, State.UNLOADING}),
    State.LOADED: frozenset({State.ACTIVATING, State.UNLOADING, State.LOADING, State.FAILED}),
    State.ACTIVATING: frozenset({State.ACTIVE, State.FAILED, State.DEACTIVATING, State.LOADING}),
    State.ACTIVE: frozenset({State.DEACTIVATING, State.FAILED, State.ACTIVATING, State.LOADING}),
    State.DEACTIVATING: frozenset({State.LOADED, State.FAILED, State.LOADING}),
    State.UNLOADING: frozenset({State.UNLOADING}),
    State.FAILED: frozenset({State.UNLOADING, State.LOADING}),
}


def can_report(previous: State | None, new: State, command: Command | None = None) -> bool:
    """Whether a node may move an instance from ``previous`` to ``new``.

    A node that restarted reports LOADING again for instances it must rebuild,
    and ACTIVATING again when it restarts a crashed process; both are allowed.
    With ``command``, UNLOADING is accepted only under UNLOAD: a stale runner
    must not unload an instance placed again under the same key.
    """
    if new is State.UNLOADING and command is not None and command is not Command.UNLOAD:
        return False
    return new == previous or new in _REPORTS[previous]


def node_step(command: Command, local: State | None) -> NodeStep:
    """The next thing a node does, from the leader's command and what runs locally.

    ``local`` is what the node itself holds (None after a node restart, whatever
    the store says), so a restarted node rebuilds what it was told to run.
    """
    if command is Command.UNLOAD:
        return NodeStep.NOTHING if local is State.UNLOADING else NodeStep.UNLOAD
    if local is State.FAILED:
        return NodeStep.NOTHING  # the leader decides: unload and replace
    if command is Command.LOAD:
        if local is None:
            return NodeStep.LOAD
        if local in (State.ACTIVE, State.ACTIVATING):
            return NodeStep.DEACTIVATE
        return NodeStep.NOTHING
    if command is Command.ACTIVATE:
        if local is None:
            return NodeStep.LOAD
        if local is State.LOADED:
            return NodeStep.ACTIVATE
        return NodeStep.NOTHING
    # DEACTIVATE
    if local in (State.ACTIVE, State.ACTIVATING):
        return NodeStep.DEACTIVATE
    if local is None:
        # Restarted node: nothing runs here, but the store may still say ACTIVE
        # or DEACTIVATING, and the leader waits for LOADED before it writes
        # UNLOAD. Rebuild to LOADED (reporting LOADING, LOADED) so it can.
        return NodeStep.LOAD
    return NodeStep.NOTHING


def leader_next_command(command: Command, state: State | None, *, wanted: bool) -> Command | None:
    """The command the leader writes next for an instance, or None to leave it.

    ``wanted`` says whether the leader still wants this instance to serve.
    """
    if state is State.FAILED:
        return Command.UNLOAD if command is not Command.UNLOAD else None
    if wanted:
        if command is Command.LOAD and state is State.LOADED:
            return Command.ACTIVATE
        return None
    if command in (Command.LOAD, Command.ACTIVATE):
        if state in (State.ACTIVE, State.ACTIVATING):
            return Command.DEACTIVATE
        return Command.UNLOAD
    if command is Command.DEACTIVATE and state in (State.LOADED, None):
        return Command.UNLOAD
    return None

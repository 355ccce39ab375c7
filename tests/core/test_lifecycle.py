"""The instance lifecycle table, cell by cell, against ARCHITECTURE.md.

::

    LOAD → LOADING → LOADED → ACTIVATE → ACTIVATING → ACTIVE
      any step may fail → FAILED
    ACTIVE → DEACTIVATE → DEACTIVATING → LOADED → UNLOAD → UNLOADING → (gone)

The expected tables below are written from that diagram and the rules around it
(the leader writes commands, the node reports states, a restarted node knows
nothing locally and rebuilds, FAILED is the leader's to resolve), not copied
from the implementation. Every cell of every table is listed, and a guard test
checks that the tables really are exhaustive.
"""

from __future__ import annotations

import itertools

import pytest

from aether.core.lifecycle import (
    Command,
    NodeStep,
    State,
    can_report,
    leader_next_command,
    node_step,
)

C = Command
S = State
NS = NodeStep
LOCAL_STATES: list[State | None] = [None, *State]

# --------------------------------------------------------------------------------------
# node_step: what a node does, given the leader's command and what it holds locally.
# --------------------------------------------------------------------------------------

NODE_STEP: dict[tuple[Command, State | None], NodeStep] = {
    # LOAD: have the files, nothing running.
    (C.LOAD, None): NS.LOAD,  # nothing here yet (or the node restarted): fetch
    (C.LOAD, S.LOADING): NS.NOTHING,  # in progress
    (C.LOAD, S.LOADED): NS.NOTHING,  # done; wait for ACTIVATE
    (C.LOAD, S.ACTIVATING): NS.DEACTIVATE,  # must not run under LOAD
    (C.LOAD, S.ACTIVE): NS.DEACTIVATE,
    (C.LOAD, S.DEACTIVATING): NS.NOTHING,  # already stopping, ends LOADED
    (C.LOAD, S.UNLOADING): NS.NOTHING,  # files are going away; never restart a removal
    (C.LOAD, S.FAILED): NS.NOTHING,  # the leader resolves FAILED (UNLOAD + replace)
    # ACTIVATE: run and serve.
    (C.ACTIVATE, None): NS.LOAD,  # restarted node rebuilds what it was told to run
    (C.ACTIVATE, S.LOADING): NS.NOTHING,  # in progress
    (C.ACTIVATE, S.LOADED): NS.ACTIVATE,
    (C.ACTIVATE, S.ACTIVATING): NS.NOTHING,  # in progress
    (C.ACTIVATE, S.ACTIVE): NS.NOTHING,  # done
    (C.ACTIVATE, S.DEACTIVATING): NS.NOTHING,  # let the running step end (LOADED) first
    (C.ACTIVATE, S.UNLOADING): NS.NOTHING,
    (C.ACTIVATE, S.FAILED): NS.NOTHING,
    # DEACTIVATE: stop serving and end at LOADED, where the leader writes UNLOAD.
    # A node that restarted holds nothing (None) while the store may still say
    # ACTIVE or DEACTIVATING: it must make progress towards LOADED, or the leader
    # (which waits for LOADED) and the node (which waits for a new command) wait
    # for each other forever.
    (C.DEACTIVATE, None): NS.LOAD,
    (C.DEACTIVATE, S.LOADING): NS.NOTHING,  # in progress, ends LOADED
    (C.DEACTIVATE, S.LOADED): NS.NOTHING,  # done
    (C.DEACTIVATE, S.ACTIVATING): NS.DEACTIVATE,
    (C.DEACTIVATE, S.ACTIVE): NS.DEACTIVATE,
    (C.DEACTIVATE, S.DEACTIVATING): NS.NOTHING,  # in progress
    (C.DEACTIVATE, S.UNLOADING): NS.NOTHING,
    (C.DEACTIVATE, S.FAILED): NS.NOTHING,
    # UNLOAD: stop whatever runs and delete it, from anywhere, once.
    (C.UNLOAD, None): NS.UNLOAD,  # restarted node: still delete files and ack
    (C.UNLOAD, S.LOADING): NS.UNLOAD,
    (C.UNLOAD, S.LOADED): NS.UNLOAD,
    (C.UNLOAD, S.ACTIVATING): NS.UNLOAD,
    (C.UNLOAD, S.ACTIVE): NS.UNLOAD,
    (C.UNLOAD, S.DEACTIVATING): NS.UNLOAD,
    (C.UNLOAD, S.UNLOADING): NS.NOTHING,  # already under way
    (C.UNLOAD, S.FAILED): NS.UNLOAD,
}


def test_node_step_table_is_exhaustive() -> None:
    assert set(NODE_STEP) == set(itertools.product(Command, LOCAL_STATES))


@pytest.mark.parametrize(("command", "local"), sorted(NODE_STEP, key=str))
def test_node_step(command: Command, local: State | None) -> None:
    assert node_step(command, local) is NODE_STEP[(command, local)]


# --------------------------------------------------------------------------------------
# leader_next_command: what the leader writes next, given command, reported state
# and whether it still wants the instance to serve.
# --------------------------------------------------------------------------------------

Expected = Command | None | frozenset[Command | None]

_STOP_OR_UNLOAD = frozenset({C.DEACTIVATE, C.UNLOAD})

LEADER: dict[tuple[Command, State | None, bool], Expected] = {}

for _state in LOCAL_STATES:
    # FAILED is always resolved by UNLOAD (a replacement is placed separately),
    # whether the instance is wanted or not; an UNLOAD already written stays.
    for _wanted in (True, False):
        for _command in Command:
            if _state is S.FAILED:
                LEADER[(_command, _state, _wanted)] = None if _command is C.UNLOAD else C.UNLOAD
        # UNLOAD is final: nothing follows it.
        if _state is not S.FAILED:
            LEADER[(C.UNLOAD, _state, _wanted)] = None

# wanted: LOAD → (LOADED) → ACTIVATE, then leave it alone.
LEADER.update(
    {
        (C.LOAD, None, True): None,  # wait for the node
        (C.LOAD, S.LOADING, True): None,
        (C.LOAD, S.LOADED, True): C.ACTIVATE,
        (C.LOAD, S.ACTIVATING, True): None,
        (C.LOAD, S.ACTIVE, True): None,
        (C.LOAD, S.DEACTIVATING, True): None,
        (C.LOAD, S.UNLOADING, True): None,
        **{(C.ACTIVATE, s, True): None for s in LOCAL_STATES if s is not S.FAILED},
        # The leader never reverses a retirement: a DEACTIVATE'd instance is
        # replaced, not re-activated (commands only move forward).
        **{(C.DEACTIVATE, s, True): None for s in LOCAL_STATES if s is not S.FAILED},
    }
)

# not wanted: stop gracefully if it may be running, unload once nothing runs.
for _command in (C.LOAD, C.ACTIVATE):
    LEADER.update(
        {
            (_command, None, False): C.UNLOAD,  # never started: remove directly
            (_command, S.LOADING, False): C.UNLOAD,
            (_command, S.LOADED, False): C.UNLOAD,
            (_command, S.ACTIVATING, False): C.DEACTIVATE,  # routers drop it first
            (_command, S.ACTIVE, False): C.DEACTIVATE,
            # Not reached in practice (a serving command with a stopping process):
            # stopping first or unloading straight away are both acceptable,
            # leaving it alone is not.
            (_command, S.DEACTIVATING, False): _STOP_OR_UNLOAD,
            (_command, S.UNLOADING, False): C.UNLOAD,
        }
    )
LEADER.update(
    {
        (C.DEACTIVATE, None, False): C.UNLOAD,  # nothing runs
        (C.DEACTIVATE, S.LOADING, False): None,  # rebuilding to LOADED: wait for it
        (C.DEACTIVATE, S.LOADED, False): C.UNLOAD,  # the diagram's LOADED → UNLOAD
        (C.DEACTIVATE, S.ACTIVATING, False): None,  # node is stopping it
        (C.DEACTIVATE, S.ACTIVE, False): None,
        (C.DEACTIVATE, S.DEACTIVATING, False): None,
        (C.DEACTIVATE, S.UNLOADING, False): frozenset({None, C.UNLOAD}),  # unreachable
    }
)


def test_leader_table_is_exhaustive() -> None:
    assert set(LEADER) == set(itertools.product(Command, LOCAL_STATES, (True, False)))


@pytest.mark.parametrize(("command", "state", "wanted"), sorted(LEADER, key=str))
def test_leader_next_command(command: Command, state: State | None, wanted: bool) -> None:
    expected = LEADER[(command, state, wanted)]
    got = leader_next_command(command, state, wanted=wanted)
    if isinstance(expected, frozenset):
        assert got in expected
    else:
        assert got is expected


_ORDER = {C.LOAD: 0, C.ACTIVATE: 1, C.DEACTIVATE: 2, C.UNLOAD: 3}


@pytest.mark.parametrize(("command", "state", "wanted"), sorted(LEADER, key=str))
def test_leader_commands_only_move_forward(
    command: Command, state: State | None, wanted: bool
) -> None:
    """No cycles: every command the leader writes is later in the lifecycle."""
    got = leader_next_command(command, state, wanted=wanted)
    if got is not None:
        assert _ORDER[got] > _ORDER[command]


@pytest.mark.parametrize(("command", "state"), list(itertools.product(Command, LOCAL_STATES)))
def test_wanted_instance_is_never_stopped_unless_failed(
    command: Command, state: State | None
) -> None:
    got = leader_next_command(command, state, wanted=True)
    if state is not S.FAILED:
        assert got not in (C.DEACTIVATE, C.UNLOAD)


# --------------------------------------------------------------------------------------
# can_report: which state a node may report after which.
# --------------------------------------------------------------------------------------

_FORWARD = {
    (None, S.LOADING),
    (S.LOADING, S.LOADED),
    (S.LOADED, S.ACTIVATING),
    (S.ACTIVATING, S.ACTIVE),
    (S.ACTIVE, S.DEACTIVATING),
    (S.DEACTIVATING, S.LOADED),
    (S.LOADED, S.UNLOADING),
}
# any step may fail (UNLOADING ends in deletion, there is nothing left to fail)
_FAILURES = {(s, S.FAILED) for s in LOCAL_STATES if s is not S.UNLOADING}
# a restarted node rebuilds: LOADING again from anything but a removal
_NODE_RESTART = {(s, S.LOADING) for s in LOCAL_STATES if s is not S.UNLOADING}
# a crashed process is restarted in place
_PROCESS_RESTART = {(S.ACTIVE, S.ACTIVATING)}
# DEACTIVATE may arrive while the node is still activating
_ABORT_ACTIVATION = {(S.ACTIVATING, S.DEACTIVATING)}
# UNLOAD straight from a state where nothing serves (leader: FAILED, never started)
_DIRECT_UNLOAD = {(s, S.UNLOADING) for s in (None, S.LOADING, S.FAILED)}
# re-sending the same report (lost response) is harmless
_REPEAT = {(s, s) for s in State}

ALLOWED = (
    _FORWARD
    | _FAILURES
    | _NODE_RESTART
    | _PROCESS_RESTART
    | _ABORT_ACTIVATION
    | _DIRECT_UNLOAD
    | _REPEAT
)


@pytest.mark.parametrize(("previous", "new"), list(itertools.product(LOCAL_STATES, State)))
def test_can_report(previous: State | None, new: State) -> None:
    assert can_report(previous, new) is ((previous, new) in ALLOWED)


@pytest.mark.parametrize(
    ("previous", "new"),
    [
        (None, S.LOADED),  # skipped LOADING
        (None, S.ACTIVE),
        (S.LOADING, S.ACTIVE),
        (S.LOADED, S.ACTIVE),  # skipped ACTIVATING (no health check)
        (S.ACTIVE, S.LOADED),  # skipped DEACTIVATING (routers never told)
        (S.UNLOADING, S.LOADING),  # a removal is final
        (S.UNLOADING, S.ACTIVE),
        (S.FAILED, S.ACTIVE),  # FAILED is the leader's to resolve
        (S.FAILED, S.LOADED),
    ],
)
def test_can_report_refuses_skips_and_resurrections(previous: State | None, new: State) -> None:
    assert not can_report(previous, new)


# --------------------------------------------------------------------------------------
# The two sides agree: what a node does in a step is a sequence of reports the
# server accepts.
# --------------------------------------------------------------------------------------

_REPORTS_OF_STEP: dict[NodeStep, list[list[State]]] = {
    NS.NOTHING: [[]],
    NS.LOAD: [[S.LOADING, S.LOADED], [S.LOADING, S.FAILED]],
    NS.ACTIVATE: [[S.ACTIVATING, S.ACTIVE], [S.ACTIVATING, S.FAILED]],
    NS.DEACTIVATE: [[S.DEACTIVATING, S.LOADED]],
    NS.UNLOAD: [[S.UNLOADING]],
}


def _reachable_command_states() -> list[tuple[Command, State | None]]:
    """(command, reported state) pairs a node can find in the store.

    Explored from a fresh placement (LOAD, None), with the node stepping from
    the reported state or from nothing (after a restart) and the leader writing
    its next command for a wanted or unwanted instance.
    """
    seen: set[tuple[Command, State | None]] = set()
    todo: list[tuple[Command, State | None]] = [(C.LOAD, None)]
    while todo:
        pair = todo.pop()
        if pair in seen:
            continue
        seen.add(pair)
        command, state = pair
        for wanted in (True, False):
            nxt = leader_next_command(command, state, wanted=wanted)
            if nxt is not None:
                todo.append((nxt, state))
        for local in {state, None}:
            for reports in _REPORTS_OF_STEP[node_step(command, local)]:
                current = state
                for report in reports:
                    if not can_report(current, report):
                        break  # refused: the store keeps the previous state
                    current = report
                    todo.append((command, current))
    return sorted(seen, key=str)


@pytest.mark.parametrize(("command", "state"), _reachable_command_states())
@pytest.mark.parametrize("restarted", [False, True])
def test_node_reports_are_accepted(command: Command, state: State | None, restarted: bool) -> None:
    """From every reachable store state, the node's step reports are allowed.

    (``restarted``: the node lost its local state, the store still holds the
    last report.)
    """
    local = None if restarted else state
    step = node_step(command, local)
    for reports in _REPORTS_OF_STEP[step]:
        current = state
        for report in reports:
            assert can_report(current, report), (command, state, local, step, report)
            current = report


@pytest.mark.parametrize(("command", "state"), _reachable_command_states())
@pytest.mark.parametrize("restarted", [False, True])
def test_every_reachable_pair_makes_progress(
    command: Command, state: State | None, restarted: bool
) -> None:
    """No deadlock: in every reachable pair the node or the leader has a next move.

    The scheduler wants only instances whose command is LOAD or ACTIVATE; the
    only resting point is a wanted, serving instance (ACTIVATE, ACTIVE) on a
    node that did not restart. An unwanted instance must always be on its way
    out. ``-ING`` states on a node that did not restart are driven by the step
    already running there.
    """
    local = None if restarted else state
    node_acts = node_step(command, local) is not NS.NOTHING
    in_progress = not restarted and state in (
        S.LOADING,
        S.ACTIVATING,
        S.DEACTIVATING,
        S.UNLOADING,
    )
    for wanted in (True, False):
        if wanted and command not in (C.LOAD, C.ACTIVATE):
            continue
        if wanted and not restarted and (command, state) == (C.ACTIVATE, S.ACTIVE):
            continue
        leader_acts = leader_next_command(command, state, wanted=wanted) is not None
        assert node_acts or leader_acts or in_progress, (command, state, local, wanted)

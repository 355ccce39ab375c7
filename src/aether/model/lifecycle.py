"""The words of the instance lifecycle: the leader's commands and the node's states.

What each may follow is the core's (:mod:`aether.core.lifecycle`); the words are
shared vocabulary, so they live here with the records that carry them.
"""

from __future__ import annotations

import enum

__all__ = ["Command", "State"]


class Command(enum.StrEnum):
    LOAD = "LOAD"
    ACTIVATE = "ACTIVATE"
    DEACTIVATE = "DEACTIVATE"
    UNLOAD = "UNLOAD"


class State(enum.StrEnum):
    LOADING = "LOADING"
    LOADED = "LOADED"
    ACTIVATING = "ACTIVATING"
    ACTIVE = "ACTIVE"
    DEACTIVATING = "DEACTIVATING"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"

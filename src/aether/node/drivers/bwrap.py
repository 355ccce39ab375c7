"""The ``bwrap`` driver: bubblewrap namespaces and rlimits, for instances and for sandboxes.

What an instance sees and the limits it gets are in
:mod:`aether.node.drivers.bwrap_instances`; what a task's sandbox sees, in
:mod:`aether.node.drivers.bwrap_sandboxes`; the pieces both build from (the
read-only system, a synthesised ``/etc``, per-name host uids) in
:mod:`aether.node.drivers.bwrap_args`. The driver is available where both run
(each is probed once, with a trivial command); ``reason`` says why not.
"""

from __future__ import annotations

import logging
import os
import shutil

from aether.node.drivers.base import Ability
from aether.node.drivers.bwrap_args import SETPRIV
from aether.node.drivers.bwrap_instances import BwrapInstances
from aether.node.drivers.bwrap_sandboxes import BwrapSandboxes

__all__ = ["BwrapDriver"]

log = logging.getLogger("aether.node.drivers")


class BwrapDriver(BwrapInstances, BwrapSandboxes):
    name = "bwrap"
    isolated = True
    # CRIU is not used on a sandboxed instance (its process tree is another uid's,
    # in PID and mount namespaces of its own): a checkpoint is cooperative
    abilities: frozenset[Ability] = frozenset({"instances", "sandboxes", "reattach"})

    def __init__(self, bwrap: str | None = None) -> None:
        super().__init__()
        self._bwrap = bwrap or shutil.which("bwrap")
        self.as_root = os.geteuid() == 0
        self._probe = {}
        self._setpriv = os.access(SETPRIV, os.X_OK)
        self._usable: bool | None = None
        self.reason = ""
        self.limits = self._instance_limits()

    def available(self) -> bool:
        if self._usable is None:
            self._usable, self.reason = self._probe_instances()
            if self._usable and not self._works(None):
                self._usable = False
                self.reason = "bubblewrap cannot make a task sandbox here; user namespaces refused?"
            if not self._usable:
                log.error("bubblewrap is not usable here: %s", self.reason)
        return self._usable

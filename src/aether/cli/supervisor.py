"""The imperative half of ``aether up``'s supervision: reap, report, restart with backoff.

Each :class:`Child` is one process ``aether up`` started (an etcd member, a server,
a node). :meth:`Supervisor.tick` waits on every exited process (so none stays a
zombie), prints ``server 2 exited (signal 9); restarting in 1.0 s``, and starts it
again once its delay (:func:`aether.core.restarts.after_exit`) has passed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from aether.core.restarts import Backoff, after_exit, describe_exit

__all__ = ["Child", "Supervisor"]


@dataclass
class Child:
    name: str  # "etcd m1", "server 2", "node-1"
    spawn: Callable[[], subprocess.Popen[bytes]]
    command: str  # how to start it by hand (printed, and in DATA/up.json)
    log: str
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    streak: int = 0
    due: float | None = None  # when the pending restart happens


@dataclass
class Supervisor:
    children: list[Child] = field(default_factory=list)
    policy: Backoff = field(default_factory=Backoff)
    out: TextIO = field(default_factory=lambda: sys.stderr)
    clock: Callable[[], float] = time.monotonic

    def add(self, child: Child) -> None:
        self.children.append(child)

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def tick(self) -> None:
        """Reap what exited, schedule its restart; restart what is due."""
        now = self.clock()
        for child in self.children:
            if child.due is None:
                code = child.proc.poll()  # waits on it: no zombie
                if code is None:
                    continue
                delay, child.streak = after_exit(self.policy, child.streak, now - child.started)
                child.due = now + delay
                self._say(
                    f"{child.name} exited ({describe_exit(code)}); restarting in {delay:.1f} s"
                    f"   (log: {child.log})"
                )
            elif now >= child.due:
                try:
                    child.proc = child.spawn()
                except (OSError, RuntimeError) as exc:
                    delay, child.streak = after_exit(self.policy, child.streak, 0.0)
                    child.due = now + delay
                    self._say(f"{child.name} did not start ({exc}); retrying in {delay:.1f} s")
                    continue
                child.started, child.due = now, None
                self._say(f"{child.name} restarted (pid {child.proc.pid})")

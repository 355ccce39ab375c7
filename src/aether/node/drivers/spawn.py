"""The one way an instance's process is started, shared by the instance drivers.

Whatever the driver wraps around the app's command (nothing, or bubblewrap),
the process it starts: runs in its own session, dies with the node (a killed
node must not leave orphans holding ports: its instances are placed elsewhere),
reads nothing, writes stdout and stderr to the instance's log, and gets an
environment built from the app's spec alone (``instance_env``) -- never the
node's own (no ``PYTHONPATH``, no ``AETHER_JOIN_TOKEN``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from aether.node.bwrap import PATH

__all__ = ["instance_env", "spawn"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child, before exec: if the node daemon dies, so does the instance."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def instance_env(env: Mapping[str, str], *, home: str) -> dict[str, str]:
    """A fixed ``PATH``, ``HOME`` and ``LANG``, then what the runner gives (the spec's env)."""
    out = {"PATH": PATH, "HOME": home, "LANG": "C.UTF-8"}
    out.update(env)
    return out


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | str,
    log_path: Path | None,
    pass_fds: Sequence[int] = (),
) -> asyncio.subprocess.Process:
    """Start ``argv`` in its own session, with the parent-death signal, logging to ``log_path``."""
    log = log_path.open("ab") if log_path else None
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log if log else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            preexec_fn=_die_with_parent,
        )
    finally:
        if log:
            log.close()

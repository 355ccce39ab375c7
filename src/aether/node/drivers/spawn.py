"""How every driver starts a process on the node: once, for instances and executions.

Whatever a driver wraps around the command (nothing, bubblewrap, a VM's QEMU),
the process it starts:

- runs in its own session (a process group the driver can signal as a whole);
- dies with the node (``PR_SET_PDEATHSIG``): a killed node must not leave
  orphans holding ports or sandboxes, its work is placed elsewhere. Set by a
  ``preexec_fn`` (``die_with_parent``), or after exec by a ``setpriv`` prefix
  (``exec_as``): with no ``preexec_fn`` and no uid change in Python,
  ``subprocess`` starts the child with ``vfork`` and does not copy the node's
  page tables, which costs milliseconds in a large process;
- gets an environment built from what it was given alone (``base_env``): a
  fixed ``PATH``, ``HOME`` and ``LANG``, then the spec's variables -- never the
  node's own (no ``PYTHONPATH``, no ``AETHER_JOIN_TOKEN``).

``spawn`` starts a long-lived process (an instance) logging to a file;
:func:`aether.node.drivers.execution.run_capped` runs one command to its end
with capped output, through the same preparation.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "PATH",
    "SETPRIV",
    "base_env",
    "before_exec",
    "die_with_parent",
    "exec_as",
    "signal_group",
    "spawn",
]

#: The ``PATH`` every instance and sandbox command gets, whatever the node's own is.
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PR_SET_PDEATHSIG = 1
SETPRIV = "/usr/bin/setpriv"


def die_with_parent() -> None:
    """Runs in the child, before exec: if the node daemon dies, so does the child."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def exec_as(uid: int | None) -> list[str]:
    """An argv prefix that does in the child what ``user=``/``group=``/``extra_groups=[]``
    and ``die_with_parent`` would do before exec.

    ``setpriv`` drops to ``uid`` and its group (real, effective and saved ids; no
    supplementary groups), then sets the parent-death signal, which a uid change
    clears; the pid stays the same through the exec that follows, so the caller
    signals and waits for it as before.
    """
    argv = [SETPRIV]
    if uid is not None:
        argv += [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return [*argv, "--pdeathsig", "KILL", "--"]


def before_exec(then: Callable[[], None] | None = None) -> Callable[[], None]:
    """``die_with_parent``, then ``then`` (rlimits, say), in the child before exec."""

    def prepare() -> None:
        die_with_parent()
        if then is not None:
            then()

    return prepare


def base_env(env: Mapping[str, str] | None, *, home: str, **fixed: str) -> dict[str, str]:
    """A fixed ``PATH``, ``HOME`` and ``LANG`` (and ``fixed``), then ``env`` (the spec's)."""
    out = {"PATH": PATH, "HOME": home, "LANG": "C.UTF-8", **fixed}
    out.update(env or {})
    return out


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group ``pid`` leads; gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | str,
    log_path: Path | None,
    pass_fds: Sequence[int] = (),
    **popen: Any,
) -> asyncio.subprocess.Process:
    """Start ``argv`` in its own session, with the parent-death signal, logging to ``log_path``.

    ``popen`` goes to ``create_subprocess_exec`` (``user``, ``group``, ``extra_groups``):
    the parent-death signal is set after the uid change (which would clear it)."""
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
            preexec_fn=die_with_parent,
            **popen,
        )
    finally:
        if log:
            log.close()

"""The ``process`` driver: a plain child process group, not isolated."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal

from aether.node.drivers.base import Handle, LaunchSpec

__all__ = ["ProcessDriver"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child: if the node daemon dies, so does the instance.

    A node that is killed must not leave orphans holding ports: its
    instances are placed elsewhere, and a restarted node starts them again.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ProcessDriver:
    name = "process"
    isolated = False

    def available(self) -> bool:
        return True

    async def start(self, spec: LaunchSpec) -> Handle:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(spec.cwd)}
        for name in ("LANG", "LC_ALL", "TZ", "PYTHONPATH"):
            if name in os.environ:
                env[name] = os.environ[name]
        env.update(spec.env)
        log = spec.log_path.open("ab") if spec.log_path else None
        try:
            process = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                f"exec {spec.command}",
                cwd=spec.cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log if log else asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            if log:
                log.close()
        return process

    async def stop(self, handle: Handle, *, grace: float = 10.0) -> int:
        if handle.returncode is not None:
            return handle.returncode
        self._signal_group(handle.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                return await handle.wait()
        except TimeoutError:
            self._signal_group(handle.pid, signal.SIGKILL)
            return await handle.wait()

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

"""The ``process`` driver: a plain child process group, not isolated.

Only for trusted single-tenant nodes, by explicit policy (``aether node
--isolation none``): the app runs as the node's user and sees the node's files
and processes. Its environment is still built from the app's spec alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from aether.node.drivers.base import Handle, LaunchSpec
from aether.node.drivers.spawn import instance_env, spawn

__all__ = ["ProcessDriver"]


class ProcessDriver:
    name = "process"
    isolated = False
    limits: dict[str, str] = {
        "memory": "not enforced",
        "cpu": "not enforced",
        "processes": "not enforced",
    }

    def available(self) -> bool:
        return True

    def host_uid(self, instance_id: str) -> int | None:
        return None  # the node's own

    async def start(self, spec: LaunchSpec) -> Handle:
        return await spawn(
            ["/bin/sh", "-c", f"exec {spec.command}"],
            env=instance_env(spec.env, home=str(spec.cwd)),
            cwd=spec.cwd,
            log_path=spec.log_path,
        )

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

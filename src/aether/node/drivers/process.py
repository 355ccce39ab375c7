"""The ``process`` driver: plain child processes, not isolated.

Instances: only for trusted single-tenant nodes, by explicit policy (``aether
node --isolation none``): the app runs as the node's user and sees the node's
files and processes. Sandboxes: the fallback where bubblewrap is missing, with
the same contract as ``bwrap`` -- a persistent workspace (cwd and ``HOME``),
argv execution, capped output, a wall-clock timeout that kills the command's
process group, and RLIMIT_DATA (``memory_mb``) and RLIMIT_CPU (``ceil(timeout *
vcpus) + 1`` s) per process. There is no process limit: RLIMIT_NPROC counts
every process of the node's user, so it cannot bound one sandbox. Either way the
environment is built from the spec alone (:func:`aether.node.drivers.spawn.base_env`).
"""

from __future__ import annotations

import asyncio
import math
import resource
import signal
from collections.abc import Callable

from aether.node.drivers.base import (
    MIB,
    Ability,
    ExecResult,
    Execution,
    Handle,
    LaunchSpec,
    SandboxHandle,
    utcnow,
)
from aether.node.drivers.execution import run_capped
from aether.node.drivers.spawn import base_env, signal_group, spawn
from aether.node.drivers.workspace import WorkspaceSandboxes

__all__ = ["ProcessDriver"]


def _rlimits(memory: int, cpu: int) -> Callable[[], None]:
    def apply() -> None:
        """Runs in the child before exec."""
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


class ProcessDriver(WorkspaceSandboxes):
    name = "process"
    isolated = False
    abilities: frozenset[Ability] = frozenset({"instances", "sandboxes", "reattach", "checkpoint"})
    limits: dict[str, str] = {
        "memory": "not enforced",
        "cpu": "not enforced",
        "processes": "not enforced",
    }

    def available(self) -> bool:
        return True

    # -- instances ----------------------------------------------------------

    def host_uid(self, instance_id: str) -> int | None:
        return None  # the node's own

    async def start(self, spec: LaunchSpec) -> Handle:
        return await spawn(
            ["/bin/sh", "-c", f"exec {spec.command}"],
            env=base_env(spec.env, home=str(spec.cwd)),
            cwd=spec.cwd,
            log_path=spec.log_path,
        )

    async def stop(self, handle: Handle, *, grace: float = 10.0) -> int:
        if handle.returncode is not None:
            return handle.returncode
        signal_group(handle.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                return await handle.wait()
        except TimeoutError:
            signal_group(handle.pid, signal.SIGKILL)
            return await handle.wait()

    # -- sandboxes ----------------------------------------------------------

    async def _execute(self, handle: SandboxHandle, execution: Execution) -> ExecResult:
        command, args, env = execution.command, execution.args, execution.env
        workspace = handle.workspace
        spec = handle.spec
        started, exited = self._track(handle.id)
        cpu = math.ceil(execution.timeout * spec.vcpus) + 1
        begun = utcnow()
        try:
            run = await run_capped(
                [command, *args],
                env=base_env(env, home=str(workspace)),
                cwd=workspace,
                stdin=execution.stdin,
                timeout=execution.timeout,
                output_limit=execution.output_limit,
                on_start=started,
                on_exit=exited,
                preexec_fn=_rlimits(spec.memory_mb * MIB, cpu),
            )
        except OSError as exc:  # not found, not executable: what a shell reports
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            return ExecResult(
                exit_code=code,
                stdout="",
                stderr=f"{command}: {exc.strerror or exc}\n",
                stdout_truncated=False,
                stderr_truncated=False,
                started_at=begun,
                finished_at=utcnow(),
            )
        return run.result(limits=True)

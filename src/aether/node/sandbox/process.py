"""The ``process`` sandbox driver: a workspace and a plain child process.

The fallback where bubblewrap is missing: not isolated (the command sees the
node's files, processes and network as the node's user), but the same contract
as ``bwrap``: a persistent workspace (cwd and ``HOME``), argv execution, capped
output, a wall-clock timeout that kills the command's process group, and
RLIMIT_DATA (``memory_mb``) and RLIMIT_CPU (``ceil(timeout * vcpus) + 1`` s) per
process. There is no process limit: RLIMIT_NPROC counts every process of the
node's user, so it cannot bound one sandbox.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import resource
import signal
from collections.abc import Callable

from aether.errors import NotFoundError
from aether.node.sandbox._run import WorkspaceDriver, run_capped
from aether.node.sandbox.base import (
    DEFAULT_OUTPUT_LIMIT,
    MIB,
    ExecResult,
    SandboxHandle,
    utcnow,
    validate_exec,
)

__all__ = ["ProcessSandboxDriver"]

_PR_SET_PDEATHSIG = 1


def _limits(memory: int, cpu: int) -> Callable[[], None]:
    def apply() -> None:
        """Runs in the child before exec: its rlimits, and death with the node."""
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return apply


class ProcessSandboxDriver(WorkspaceDriver):
    name = "process"
    isolated = False

    def available(self) -> bool:
        return True

    async def execute(
        self,
        handle: SandboxHandle,
        command: str,
        args: list[str],
        *,
        timeout: float,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
    ) -> ExecResult:
        validate_exec(command, args, env, timeout, output_limit)
        workspace = handle.workspace
        if not workspace.is_dir():
            raise NotFoundError(f"sandbox {handle.id} is gone")
        spec = handle.spec
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(workspace),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        full_env.update(env or {})
        started, exited = self._track(handle.id)
        cpu = math.ceil(timeout * spec.vcpus) + 1
        begun = utcnow()
        try:
            run = await run_capped(
                [command, *args],
                env=full_env,
                cwd=workspace,
                stdin=stdin,
                timeout=timeout,
                output_limit=output_limit,
                on_start=started,
                on_exit=exited,
                preexec_fn=_limits(spec.memory_mb * MIB, cpu),
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

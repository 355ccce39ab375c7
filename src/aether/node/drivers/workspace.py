"""Sandboxes whose state is a directory on the node: create, re-attach, delete."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aether.errors import NotFoundError
from aether.node.drivers.base import (
    DEFAULT_OUTPUT_LIMIT,
    WORKSPACE_DIR,
    ExecResult,
    Execution,
    SandboxHandle,
    SandboxSpec,
    read_state,
    utcnow,
    validate_exec,
    write_state,
)
from aether.node.drivers.execution import kill_group
from aether.node.trees import remove_tree

__all__ = ["WorkspaceSandboxes"]


class WorkspaceSandboxes:
    """Create, load and delete for drivers whose sandbox is a workspace directory.

    ``execute`` checks the command and that the sandbox exists, once for every
    driver; subclasses set ``name`` and implement ``_execute`` (with ``run_capped``,
    or in a VM), registering running process groups so ``delete`` can stop them.
    """

    name = "workspace"

    def __init__(self) -> None:
        self._running: dict[str, set[int]] = {}

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        existing = self.load(spec.id, spec.root)
        if existing is not None:
            return existing
        spec.root.mkdir(parents=True, exist_ok=True)
        (spec.root / WORKSPACE_DIR).mkdir(mode=0o700, exist_ok=True)
        handle = SandboxHandle(
            spec=spec, driver=self.name, created_at=utcnow(), extra=self._prepare(spec)
        )
        write_state(handle)
        return handle

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
        if not handle.workspace.is_dir():
            raise NotFoundError(f"sandbox {handle.id} is gone")
        run = Execution(command, list(args), timeout, stdin, dict(env or {}), output_limit)
        return await self._execute(handle, run)

    @abc.abstractmethod
    async def _execute(self, handle: SandboxHandle, execution: Execution) -> ExecResult:
        """Run ``execution`` (already checked) in the sandbox."""

    def _prepare(self, spec: SandboxSpec) -> dict[str, Any]:
        """Driver-specific setup of a new sandbox; what it returns is saved."""
        return {}

    def load(self, id: str, root: Path) -> SandboxHandle | None:
        return read_state(id, root, self.name)

    async def delete(self, handle: SandboxHandle) -> None:
        for pid in self._running.pop(handle.id, set()):
            kill_group(pid)
        root = handle.spec.root
        if read_state(handle.id, root, self.name) is None and not (root / WORKSPACE_DIR).exists():
            return  # already gone (or never ours): delete nothing we do not own
        await asyncio.to_thread(remove_tree, root)

    def _track(self, id: str) -> tuple[Callable[[int], None], Callable[[int], None]]:
        def started(pid: int) -> None:
            self._running.setdefault(id, set()).add(pid)

        def exited(pid: int) -> None:
            self._running.get(id, set()).discard(pid)

        return started, exited

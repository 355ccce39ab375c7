"""Sandboxes whose state is a directory on the node: create, re-attach, delete.

A driver keeps the handles it has loaded: ``load`` of a known sandbox is a
``stat`` of its state file and of its workspace, not a read and parse, so an
execution in an existing sandbox costs no file reads. The ``stat`` makes the
cache safe to share a root with other driver instances (another node process,
a restarted one): a state file replaced or removed by anyone is read again or
reported gone.
"""

from __future__ import annotations

import abc
import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aether.errors import NotFoundError
from aether.node.drivers.base import (
    DEFAULT_OUTPUT_LIMIT,
    STATE_FILE,
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

_KEEP = 4096  # handles kept at most (the oldest goes first): deletes elsewhere leave some behind
# what identifies one version of a state file: written by rename, so a new inode each time
_StateKey = tuple[int, int, int, int, int]


def _state_key(root: Path) -> _StateKey | None:
    try:
        st = os.stat(root / STATE_FILE)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class WorkspaceSandboxes:
    """Create, load and delete for drivers whose sandbox is a workspace directory.

    ``execute`` checks the command and that the sandbox exists, once for every
    driver; subclasses set ``name`` and implement ``_execute`` (with ``run_capped``,
    or in a VM), registering running process groups so ``delete`` can stop them.
    """

    name = "workspace"

    def __init__(self) -> None:
        self._running: dict[str, set[int]] = {}
        self._loaded: dict[Path, tuple[_StateKey, SandboxHandle]] = {}

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
        """The sandbox saved under ``root``: cheap enough to call from the event loop.

        Read once, then kept while its state file is the same file (the key is
        taken before the read, so a file replaced meanwhile is read again next
        time); the workspace is checked every time.
        """
        key = _state_key(root)
        if key is None:
            self._loaded.pop(root, None)
            return None
        kept = self._loaded.get(root)
        if kept is not None and kept[0] == key and kept[1].id == id:
            return kept[1] if kept[1].workspace.is_dir() else None
        handle = read_state(id, root, self.name)
        if handle is None:
            self._loaded.pop(root, None)
        else:
            if len(self._loaded) >= _KEEP and root not in self._loaded:
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[root] = (key, handle)
        return handle

    async def delete(self, handle: SandboxHandle) -> None:
        for pid in self._running.pop(handle.id, set()):
            kill_group(pid)
        root = handle.spec.root
        self._loaded.pop(root, None)
        if read_state(handle.id, root, self.name) is None and not (root / WORKSPACE_DIR).exists():
            return  # already gone (or never ours): delete nothing we do not own
        await asyncio.to_thread(remove_tree, root)

    def _track(self, id: str) -> tuple[Callable[[int], None], Callable[[int], None]]:
        def started(pid: int) -> None:
            self._running.setdefault(id, set()).add(pid)

        def exited(pid: int) -> None:
            self._running.get(id, set()).discard(pid)

        return started, exited

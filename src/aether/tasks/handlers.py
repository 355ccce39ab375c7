"""What nodes do for each task type. Register a handler for a new type with ``@handler``.

A handler gets the task's validated payload and a ``TaskContext`` (the node's
sandbox drivers, its sandbox directory, the API client) and returns the task's
result as a JSON object. Raising ``PermanentTaskError`` fails the task without
retries; any other exception fails the attempt, and the queue retries it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from aether.tasks.types import (
    AgentRunPayload,
    AgentSandboxPayload,
    JobRunPayload,
    VmCreatePayload,
    VmDeletePayload,
    VmExecutePayload,
    lookup,
)

__all__ = ["DEFAULT_DRIVERS", "PermanentTaskError", "TaskContext", "handler", "handler_for"]

DEFAULT_DRIVERS = ("bwrap", "process", "microvm")


class PermanentTaskError(Exception):
    """Retrying cannot help (a bad payload, a sandbox that is gone)."""


@dataclass
class TaskContext:
    node: str
    sandboxes: dict[str, Any]  # driver name → a driver with the sandboxes ability, best first
    root: Path  # where this node keeps sandbox state
    client: Any  # aether.client.ApiClient
    timeout: float  # seconds left for this attempt
    output_limit: int = 1 << 20
    task_id: str = ""  # the task being run: named when downloading what it needs

    def driver(self, name: str | None) -> Any:
        if name:
            if name not in self.sandboxes:
                raise PermanentTaskError(f"this node has no {name} sandbox driver")
            return self.sandboxes[name]
        for preferred in DEFAULT_DRIVERS:  # light isolation first; a microvm when asked for
            if preferred in self.sandboxes:
                return self.sandboxes[preferred]
        return next(iter(self.sandboxes.values()))

    def sandbox_root(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id


Handler = Callable[[BaseModel, TaskContext], Awaitable[dict[str, Any]]]
_HANDLERS: dict[str, Handler] = {}


def handler(name: str) -> Callable[[Handler], Handler]:
    if lookup(name) is None:
        raise ValueError(f"register the task type {name!r} first (aether.tasks.types.register)")

    def wrap(fn: Handler) -> Handler:
        _HANDLERS[name] = fn
        return fn

    return wrap


def handler_for(name: str) -> Handler | None:
    return _HANDLERS.get(name)


async def _find(ctx: TaskContext, sandbox_id: str) -> tuple[Any, Any]:
    # ``load`` is called on the event loop: the drivers keep what they have read,
    # so a known sandbox costs two ``stat`` calls, less than a hop to a thread
    for driver in ctx.sandboxes.values():
        handle = driver.load(sandbox_id, ctx.sandbox_root(sandbox_id))
        if handle is not None:
            return driver, handle
    raise PermanentTaskError(f"sandbox {sandbox_id} is not on node {ctx.node} (deleted?)")


def _exec_result(sandbox_id: str, command: str, args: list[str], result: Any) -> dict[str, Any]:
    return {
        "vm_id": sandbox_id,  # the wire name (see aether.tasks.types.SandboxId)
        "command": command,
        "args": args,
        "exit_code": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "timed_out": result.timed_out,
        "killed_reason": result.killed_reason,
        "started_at": result.started_at.timestamp(),
        "finished_at": result.finished_at.timestamp(),
    }


@handler("vm:create")
async def vm_create(payload: BaseModel, ctx: TaskContext) -> dict[str, Any]:
    from aether.node.drivers.base import SandboxSpec

    assert isinstance(payload, VmCreatePayload) and payload.sandbox_id
    driver = ctx.driver(payload.driver)
    existing = await asyncio.to_thread(
        driver.load, payload.sandbox_id, ctx.sandbox_root(payload.sandbox_id)
    )
    if existing is None:  # a retried create finds the sandbox it made before
        await driver.create(
            SandboxSpec(
                id=payload.sandbox_id,
                name=payload.name,
                vcpus=payload.vcpus,
                memory_mb=payload.memory_mb,
                network=payload.network,
                root=ctx.sandbox_root(payload.sandbox_id),
            )
        )
    return {
        "vm_id": payload.sandbox_id,
        "name": payload.name,
        "status": "running",
        "driver": driver.name,
        "isolated": driver.isolated,
        "node": ctx.node,
    }


@handler("vm:execute")
async def vm_execute(payload: BaseModel, ctx: TaskContext) -> dict[str, Any]:
    assert isinstance(payload, VmExecutePayload)
    driver, handle = await _find(ctx, payload.sandbox_id)
    result = await driver.execute(
        handle,
        payload.command,
        payload.args,
        timeout=ctx.timeout,
        stdin=payload.stdin.encode() if payload.stdin is not None else None,
        env=payload.env,
        output_limit=ctx.output_limit,
    )
    return _exec_result(payload.sandbox_id, payload.command, payload.args, result)


@handler("vm:delete")
async def vm_delete(payload: BaseModel, ctx: TaskContext) -> dict[str, Any]:
    assert isinstance(payload, VmDeletePayload)
    try:
        driver, handle = await _find(ctx, payload.sandbox_id)
    except PermanentTaskError:
        return {"vm_id": payload.sandbox_id, "already_gone": True}  # deleting twice is fine
    await driver.delete(handle)
    return {"vm_id": payload.sandbox_id}


async def _fresh_sandbox(
    ctx: TaskContext, driver: Any, sandbox_id: str, name: str, memory_mb: int, network: bool
) -> Any:
    """A new sandbox for one command (a retry's leftovers deleted first)."""
    from aether.node.drivers.base import SandboxSpec

    root = ctx.sandbox_root(sandbox_id)
    if root.exists():  # a retry: start clean
        old = await asyncio.to_thread(driver.load, sandbox_id, root)
        if old is not None:
            await driver.delete(old)
        shutil.rmtree(root, ignore_errors=True)
    spec = SandboxSpec(
        id=sandbox_id, name=name, vcpus=1, memory_mb=memory_mb, network=network, root=root
    )
    return await driver.create(spec)


@handler("job:run")
async def job_run(payload: BaseModel, ctx: TaskContext) -> dict[str, Any]:
    """A fresh sandbox with the app's artifact in its workspace, one command, then gone."""
    from aether.artifacts import safe_extract

    assert isinstance(payload, JobRunPayload) and payload.digest and payload.sandbox_id
    driver = ctx.driver(None)
    handle = await _fresh_sandbox(
        ctx, driver, payload.sandbox_id, f"job-{payload.app}", payload.memory_mb, payload.network
    )
    try:
        with tempfile.TemporaryDirectory(dir=ctx.root) as tmp:
            archive = Path(tmp) / "artifact.tar.gz"
            await ctx.client.download_artifact(payload.digest, archive, task=ctx.task_id)
            from aether.artifacts.digest import digest_file

            actual, _ = await asyncio.to_thread(digest_file, archive)
            if actual != payload.digest:
                raise RuntimeError(f"artifact digest mismatch: {actual} != {payload.digest}")
            unpacked = Path(tmp) / "app"
            await asyncio.to_thread(safe_extract, archive, unpacked)
            await asyncio.to_thread(
                shutil.copytree, unpacked, handle.workspace, dirs_exist_ok=True, symlinks=True
            )
        result = await driver.execute(
            handle,
            payload.command,
            payload.args,
            timeout=ctx.timeout,
            env=payload.env,
            output_limit=ctx.output_limit,
        )
    finally:
        await driver.delete(handle)
    out = _exec_result(payload.sandbox_id, payload.command, payload.args, result)
    out["sandbox_id"] = payload.sandbox_id
    out["driver"] = driver.name
    out["app"] = payload.app
    out["version"] = payload.version
    return out


@handler("agent:sandbox")
async def agent_sandbox(payload: BaseModel, ctx: TaskContext) -> dict[str, Any]:
    """An agent's ``sandbox`` tool call: a fresh sandbox, one command, then gone."""

    assert isinstance(payload, AgentSandboxPayload)
    driver = ctx.driver(None)
    name = f"tool-{payload.run_id}-{payload.step}"
    handle = await _fresh_sandbox(
        ctx, driver, payload.sandbox_id, name, payload.memory_mb, payload.network
    )
    try:
        result = await driver.execute(
            handle,
            payload.command[0],
            payload.command[1:],
            timeout=ctx.timeout,
            stdin=payload.stdin.encode() if payload.stdin is not None else None,
            env={},
            output_limit=ctx.output_limit,
        )
        files, dropped = await asyncio.to_thread(kept_files, Path(handle.workspace) / "out")
    finally:
        await driver.delete(handle)
    out = _exec_result(payload.sandbox_id, payload.command[0], payload.command[1:], result)
    out.update(run_id=payload.run_id, step=payload.step, driver=driver.name)
    out.update(files=files, files_dropped=dropped)
    return out


#: what a sandbox tool may keep of what it wrote under /workspace/out
KEPT_FILES = 16
KEPT_FILE_BYTES = 1 << 20


def kept_files(out: Path) -> tuple[list[dict[str, Any]], int]:
    """The regular files under ``out`` (a sandbox's ``/workspace/out``) as
    ``{name, size, sha256, content}`` (base64), at most ``KEPT_FILES`` of at most
    ``KEPT_FILE_BYTES`` each, and how many more were left. Symbolic links are never
    followed (the sandbox wrote them: they could point anywhere on the node)."""
    if out.is_symlink() or not out.is_dir():
        return [], 0
    kept: list[dict[str, Any]] = []
    dropped = 0
    for top, dirs, names in os.walk(out, followlinks=False):
        dirs.sort()
        for entry in sorted(names):
            path = Path(top) / entry
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):  # a link, a fifo, a device: not kept
                continue
            name = path.relative_to(out).as_posix()
            if len(kept) >= KEPT_FILES or info.st_size > KEPT_FILE_BYTES or len(name) > 255:
                dropped += 1
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # swapped for a link since: refused
            with os.fdopen(fd, "rb") as fh:
                data = fh.read(KEPT_FILE_BYTES)
            kept.append(
                {
                    "name": name,
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "content": base64.b64encode(data).decode(),
                }
            )
    return kept, dropped


@handler("agent:run")
async def agent_run(payload: BaseModel, ctx: TaskContext) -> dict[str, Any]:
    """Drive an agent's run until it ends or waits for a person."""
    from aether.agents.runner import drive_run

    assert isinstance(payload, AgentRunPayload)
    return await drive_run(ctx.client, payload.run_id, node=ctx.node, task_id=ctx.task_id)

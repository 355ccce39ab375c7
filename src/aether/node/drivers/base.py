"""The node's drivers: one protocol, with the abilities each driver has.

A driver is a way to confine work on a node: ``process`` (none: a plain child
process, for trusted single-tenant nodes), ``bwrap`` (bubblewrap namespaces and
rlimits) and ``microvm`` (a QEMU VM per sandbox). Every driver says what it is
(``name``, ``isolated``), whether this machine can run it (``available()``) and
which of these abilities it has (``abilities``):

``instances``  run an app instance's long-lived process and stop it
               (:class:`RunsInstances`: ``start``, ``stop``, ``host_uid``, ``limits``);
``sandboxes``  create a sandbox, execute commands in it, delete it
               (:class:`RunsSandboxes`);
``reattach``   find a sandbox again after a node restart (``RunsSandboxes.load``);
``checkpoint`` an instance's process tree can be checkpointed and restored with
               CRIU (:mod:`aether.node.checkpoint`).

The runner owns an instance's lifecycle, health checks and restarts, and the
task handlers own a sandbox's; a driver only turns a spec into a running thing
and back. How a process is started (its own session, death with the node, an
environment from the spec alone) is :mod:`aether.node.drivers.spawn`, once for
every driver; one contract suite (``tests/node/test_driver_contract.py``) runs
over every driver this machine has.

Sandboxes, in detail (every driver with the ``sandboxes`` ability keeps this):

- ``create(spec)`` makes the sandbox's state under ``spec.root`` (a directory the
  node gives to this sandbox alone) and returns a handle. It is cheap: no system
  files are copied. Creating an existing sandbox again returns the same sandbox,
  so a retried ``vm:create`` is harmless.
- ``execute(handle, command, args, ...)`` runs ``command`` with ``args`` as an argv
  (never through a shell unless the caller passes ``sh -c``) with the workspace as
  its working directory and ``HOME``. The workspace persists across the
  executions of one sandbox; nothing else does (no process outlives its
  execution). Output is read incrementally: the first ``output_limit`` bytes of
  each stream are kept, the rest is counted and dropped, and a truncation mark is
  appended. A run past ``timeout`` seconds (wall clock) is killed with everything
  it started; ``killed_reason`` says why a run was stopped.
- ``delete(handle)`` stops running executions and removes the sandbox's state.
- ``load(id, root)`` re-attaches to a sandbox after a node restart, from the state
  saved under its root; ``None`` when there is no such sandbox there.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from aether.errors import AetherError, BadRequestError

__all__ = [
    "DEFAULT_OUTPUT_LIMIT",
    "MIB",
    "WORKSPACE_DIR",
    "Ability",
    "Driver",
    "ExecResult",
    "Execution",
    "Handle",
    "LaunchSpec",
    "RunsInstances",
    "RunsSandboxes",
    "SandboxError",
    "SandboxHandle",
    "SandboxSpec",
    "read_state",
    "utcnow",
    "validate_exec",
    "write_state",
]

Ability = Literal["instances", "sandboxes", "reattach", "checkpoint"]


class Driver(Protocol):
    name: str
    isolated: bool  # whether what it runs is kept from the node (a security boundary)
    abilities: frozenset[Ability]

    def available(self) -> bool:
        """Whether this machine can run this driver (a node capability)."""
        ...


# -- the ``instances`` ability ---------------------------------------------------------


@dataclass(frozen=True)
class LaunchSpec:
    """What to run, and the instance's files as the node keeps them.

    Paths (``cwd``, and values of ``env``) are host paths under ``root``; an
    isolated driver shows ``root`` at its own place inside the sandbox and
    rewrites them. Only ``writable`` (directories under ``root``) are shown.
    """

    command: str  # a shell command line, as written in aether.toml's ``start``
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    instance_id: str = ""  # stable for the instance (its host uid derives from it)
    root: Path | None = None  # the instance's directory on the node
    writable: tuple[Path, ...] = ()  # directories under ``root`` the instance may write
    memory_mb: int = 0  # the spec's memory; 0: no limit


class Handle(Protocol):
    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int:
        """Wait for the process to exit; its exit code."""
        ...


class RunsInstances(Driver, Protocol):
    """The ``instances`` ability: an app instance's process, started and stopped."""

    limits: dict[str, str]  # what is enforced: memory, cpu, processes (shown by `aether nodes`)

    def host_uid(self, instance_id: str) -> int | None:
        """The host uid the instance runs as, to own its files; None: the node's own."""
        ...

    async def start(self, spec: LaunchSpec) -> Handle: ...

    async def stop(self, handle: Handle, *, grace: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the exit code."""
        ...


# -- the ``sandboxes`` and ``reattach`` abilities -------------------------------------------

MIB = 1024 * 1024
DEFAULT_OUTPUT_LIMIT = 1 * MIB
STATE_FILE = "sandbox.json"
WORKSPACE_DIR = "workspace"

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class SandboxError(AetherError):
    """A sandbox could not be created or used (the driver says why)."""

    code = "sandbox_error"
    status = 500


@dataclass(frozen=True)
class SandboxSpec:
    """What to create; ``root`` is this sandbox's own directory on the node."""

    id: str
    name: str
    root: Path
    vcpus: int = 1
    memory_mb: int = 256
    network: bool = False
    max_processes: int = 256  # processes and threads at once (bwrap: RLIMIT_NPROC)
    ro_paths: tuple[Path, ...] = ()  # host paths shown read-only at the same path

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise BadRequestError(f"invalid sandbox id {self.id!r}")
        if self.vcpus < 1:
            raise BadRequestError("vcpus must be at least 1")
        if self.memory_mb < 16:
            raise BadRequestError("memory_mb must be at least 16")
        if self.max_processes < 1:
            raise BadRequestError("max_processes must be at least 1")
        for path in self.ro_paths:
            if not path.is_absolute():
                raise BadRequestError(f"read-only path {path} must be absolute")


@dataclass(frozen=True)
class SandboxHandle:
    """A created sandbox; ``extra`` holds driver-specific state saved with it."""

    spec: SandboxSpec
    driver: str
    created_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def workspace(self) -> Path:
        """The workspace on the host (``/workspace`` inside isolated sandboxes)."""
        return self.spec.root / WORKSPACE_DIR


@dataclass(frozen=True)
class ExecResult:
    """One execution; the text streams are capped and carry a truncation mark."""

    exit_code: int  # 128 + N when killed by signal N, as a shell reports it
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    started_at: datetime
    finished_at: datetime
    timed_out: bool = False
    killed_reason: str | None = None  # "timeout", "memory limit", "cpu time limit", ...

    @property
    def duration(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class Execution:
    """One command to run in a sandbox, checked (``validate_exec``) before a driver sees it."""

    command: str
    args: list[str]
    timeout: float
    stdin: bytes | None = None
    env: dict[str, str] = field(default_factory=dict)
    output_limit: int = DEFAULT_OUTPUT_LIMIT


class RunsSandboxes(Driver, Protocol):
    """The ``sandboxes`` ability (with ``reattach``): tasks' commands in a workspace."""

    async def create(self, spec: SandboxSpec) -> SandboxHandle: ...

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
    ) -> ExecResult: ...

    async def delete(self, handle: SandboxHandle) -> None: ...

    def load(self, id: str, root: Path) -> SandboxHandle | None:
        """Re-attach to a sandbox created before a node restart."""
        ...


def validate_exec(
    command: str, args: list[str], env: dict[str, str] | None, timeout: float, output_limit: int
) -> None:
    """Reject what exec would choke on, before anything starts."""
    if not command:
        raise BadRequestError("command must not be empty")
    if "\0" in command or any("\0" in arg for arg in args):
        raise BadRequestError("command and args must not contain NUL bytes")
    for key, value in (env or {}).items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise BadRequestError(f"invalid environment variable {key!r}")
    if not timeout > 0:
        raise BadRequestError("timeout must be positive")
    if output_limit < 0:
        raise BadRequestError("output_limit must not be negative")


def write_state(handle: SandboxHandle) -> None:
    """Save what ``load`` needs, atomically, in the sandbox's root."""
    spec = handle.spec
    state = {
        "id": spec.id,
        "name": spec.name,
        "driver": handle.driver,
        "vcpus": spec.vcpus,
        "memory_mb": spec.memory_mb,
        "network": spec.network,
        "max_processes": spec.max_processes,
        "ro_paths": [str(p) for p in spec.ro_paths],
        "created_at": handle.created_at.isoformat(),
        "extra": handle.extra,
    }
    path = spec.root / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def read_state(id: str, root: Path, driver: str) -> SandboxHandle | None:
    """The handle saved under ``root``, if it is this driver's sandbox ``id``."""
    try:
        state = json.loads((root / STATE_FILE).read_text())
        if state.get("id") != id or state.get("driver") != driver:
            return None
        spec = SandboxSpec(
            id=id,
            name=str(state["name"]),
            root=root,
            vcpus=int(state["vcpus"]),
            memory_mb=int(state["memory_mb"]),
            network=bool(state["network"]),
            max_processes=int(state.get("max_processes", 256)),
            ro_paths=tuple(Path(p) for p in state.get("ro_paths", [])),
        )
        created = datetime.fromisoformat(state["created_at"])
        extra = dict(state.get("extra") or {})
    except (OSError, ValueError, KeyError, TypeError, AetherError):
        return None
    if not (root / WORKSPACE_DIR).is_dir():
        return None
    return SandboxHandle(spec=spec, driver=driver, created_at=created, extra=extra)


def utcnow() -> datetime:
    return datetime.now(UTC)

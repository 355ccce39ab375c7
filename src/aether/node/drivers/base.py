"""What a driver must do: start an instance's process, and stop it.

Drivers are small: the runner owns the lifecycle, health checks and restarts;
a driver only turns a ``LaunchSpec`` into a running ``Handle`` and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = ["Driver", "Handle", "LaunchSpec"]


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


class Driver(Protocol):
    name: str
    isolated: bool
    limits: dict[str, str]  # what is enforced: memory, cpu, processes (shown by `aether nodes`)

    def available(self) -> bool:
        """Whether this machine can run this driver (a node capability)."""
        ...

    def host_uid(self, instance_id: str) -> int | None:
        """The host uid the instance runs as, to own its files; None: the node's own."""
        ...

    async def start(self, spec: LaunchSpec) -> Handle: ...

    async def stop(self, handle: Handle, *, grace: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the exit code."""
        ...

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
    command: str  # a shell command line, as written in aether.toml's ``start``
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None


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

    def available(self) -> bool:
        """Whether this machine can run this driver (a node capability)."""
        ...

    async def start(self, spec: LaunchSpec) -> Handle: ...

    async def stop(self, handle: Handle, *, grace: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the exit code."""
        ...

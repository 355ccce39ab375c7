"""The ``microvm`` driver: a QEMU/KVM virtual machine per sandbox (placeholder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from aether.node.sandbox._run import WorkspaceDriver
from aether.node.sandbox.base import (
    DEFAULT_OUTPUT_LIMIT,
    ExecResult,
    SandboxError,
    SandboxHandle,
    SandboxSpec,
)

__all__ = ["MicroVMSandboxDriver"]


class MicroVMSandboxDriver(WorkspaceDriver):
    name = "microvm"
    isolated = True

    def available(self) -> bool:
        return (
            os.access("/dev/kvm", os.R_OK | os.W_OK)
            and shutil.which("qemu-system-x86_64") is not None
            and any(Path("/boot").glob("vmlinuz-*"))
        )

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        raise SandboxError("the microvm driver is not implemented yet")

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
        raise SandboxError("the microvm driver is not implemented yet")

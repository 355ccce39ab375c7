"""Sandboxes: isolated places on a node where tasks run commands.

``drivers_available()`` is what a node reports as its sandbox capabilities and
uses to run ``vm:create``/``vm:execute``/``vm:delete``; the contract is in
``aether.node.sandbox.base``.
"""

from __future__ import annotations

from aether.node.sandbox.base import (
    DEFAULT_OUTPUT_LIMIT,
    ExecResult,
    SandboxDriver,
    SandboxError,
    SandboxHandle,
    SandboxSpec,
)

__all__ = [
    "DEFAULT_OUTPUT_LIMIT",
    "ExecResult",
    "SandboxDriver",
    "SandboxError",
    "SandboxHandle",
    "SandboxSpec",
    "all_drivers",
    "drivers_available",
]


def all_drivers() -> dict[str, SandboxDriver]:
    """Every driver, whether or not this machine runs it, the default choice first.

    ``bwrap`` is isolated and cheap (a sandbox is a directory); ``microvm`` is a
    stronger boundary but boots a VM per sandbox; ``process`` is not isolated.
    """
    from aether.node.sandbox.bwrap import BwrapSandboxDriver
    from aether.node.sandbox.microvm import MicroVMSandboxDriver
    from aether.node.sandbox.process import ProcessSandboxDriver

    drivers: list[SandboxDriver] = [
        BwrapSandboxDriver(),
        MicroVMSandboxDriver(),
        ProcessSandboxDriver(),
    ]
    return {d.name: d for d in drivers}


def drivers_available() -> dict[str, SandboxDriver]:
    """The drivers this machine can run, the default first (a node capability)."""
    return {name: d for name, d in all_drivers().items() if d.available()}

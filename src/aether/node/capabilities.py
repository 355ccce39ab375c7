"""What this machine can do, reported when the node registers."""

from __future__ import annotations

import os
import platform

from aether.model.cluster import NodeCapabilities

__all__ = ["fingerprint"]


def _memory_mb() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1024


def fingerprint(
    drivers: list[str], labels: dict[str, str], sandbox_drivers: list[str] | None = None
) -> NodeCapabilities:
    return NodeCapabilities(
        cpus=float(os.cpu_count() or 1),
        memory_mb=_memory_mb(),
        drivers=drivers,
        sandbox_drivers=sandbox_drivers or [],
        kernel=platform.release(),
        labels=labels,
    )

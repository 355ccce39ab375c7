"""What this machine can do, reported when the node registers (the handshake).

Each probe is cheap and never raises: a probe that cannot tell says no, with
the reason where one helps an operator (``criu_detail``). The server answers
with a :class:`~aether.model.api.NodeConfig` that turns features on or off.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from aether.model.cluster import NodeCapabilities

__all__ = ["NODE_FEATURES", "cgroup_version", "criu_check", "fingerprint", "kvm_usable"]

# Protocol features this node speaks; the server enables only those it knows.
NODE_FEATURES = [
    "telemetry",  # pushes NodeMetrics every NodeConfig.telemetry_interval
    "request_ids",  # never runs one command request twice
    "cooperative_checkpoint",  # SIGUSR1 + ack file + state-dir snapshot
    "criu_checkpoint",  # criu dump/restore when `criu check` passes
]


def _memory_mb() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1024


def cgroup_version(root: Path = Path("/sys/fs/cgroup")) -> str:
    """``v2`` or ``v1`` when a writable hierarchy is mounted at ``root``, else ``none``."""
    if (root / "cgroup.controllers").exists():
        return "v2" if os.access(root, os.W_OK) else "none"
    v1 = [p for p in ("memory", "cpu", "cpu,cpuacct") if (root / p / "tasks").exists()]
    if v1 and all(os.access(root / p, os.W_OK) for p in v1):
        return "v1"
    return "none"


def criu_check(timeout: float = 20.0) -> tuple[bool, str]:
    """Whether ``criu check`` passes here, and the reason when it does not."""
    criu = shutil.which("criu")
    if criu is None:
        return False, "criu is not installed (apt-get install criu)"
    try:
        proc = subprocess.run(
            [criu, "check"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"criu check could not run: {exc}"
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode == 0 and "Error" not in output:
        return True, output.splitlines()[-1] if output else "criu check passed"
    errors = [line for line in output.splitlines() if "Error" in line]
    return False, (errors[-1] if errors else output[-200:] or f"exit status {proc.returncode}")


def kvm_usable() -> bool:
    """/dev/kvm is there, ours to open, and the CPU has hardware virtualisation."""
    from aether.node.drivers.microvm import missing_prerequisites

    kvm_missing = [m for m in missing_prerequisites("kvm") if "kvm" in m or "VT-x" in m]
    return not kvm_missing


def fingerprint(
    drivers: list[str],
    labels: dict[str, str],
    sandbox_drivers: list[str] | None = None,
    *,
    probe_criu: bool = True,
    isolation: str = "none",
    isolation_detail: str = "",
    limits: dict[str, str] | None = None,
) -> NodeCapabilities:
    criu, detail = criu_check() if probe_criu else (False, "not probed (--no-criu)")
    return NodeCapabilities(
        cpus=float(os.cpu_count() or 1),
        memory_mb=_memory_mb(),
        drivers=drivers,
        sandbox_drivers=sandbox_drivers or [],
        kernel=platform.release(),
        labels=labels,
        cgroup=cgroup_version(),  # type: ignore[arg-type]
        criu=criu,
        criu_detail=detail,
        bwrap=shutil.which("bwrap") is not None,
        kvm=kvm_usable(),
        features=list(NODE_FEATURES),
        isolation=isolation,  # type: ignore[arg-type]
        isolation_detail=isolation_detail,
        limits=limits or {},
    )

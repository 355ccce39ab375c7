"""The pure half of ``aether doctor``: a check's result and its verdicts over observed facts.

Every function here decides from facts it is given (no I/O), so each verdict is tested
without the host; :mod:`aether.ops.doctor_probes` gathers the facts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CLOCK_FAIL_SECONDS",
    "CLOCK_WARN_SECONDS",
    "DISK_FAIL_BYTES",
    "DISK_WARN_BYTES",
    "Check",
    "DirFacts",
    "DoctorOptions",
    "KvmFacts",
    "Status",
    "clock_verdict",
    "data_dir_verdict",
    "disk_verdict",
    "failed",
    "kvm_verdict",
    "port_verdict",
    "render",
]

Status = Literal["ok", "warn", "fail", "skip"]

CLOCK_WARN_SECONDS = 1.0  # leases and certificate times tolerate this much
CLOCK_FAIL_SECONDS = 30.0  # beyond this, tokens and certificates look not yet valid / expired
DISK_WARN_BYTES = 5 << 30
DISK_FAIL_BYTES = 1 << 30


@dataclass(frozen=True, slots=True)
class Check:
    """One check's result: ``fix`` is the line an operator acts on (empty when ok)."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def failed(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


# -- pure verdicts over observed facts ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class KvmFacts:
    """What trying KVM showed: ``open_error`` when /dev/kvm could not be opened,
    ``api_version`` from KVM_GET_API_VERSION, ``vm_error`` when KVM_CREATE_VM failed,
    ``cpu_virt`` whether the CPU flags have VT-x/AMD-V, ``pvm`` whether the kvm_pvm
    module (software nested virtualisation) is loaded."""

    exists: bool
    open_error: str = ""
    api_version: int | None = None
    vm_error: str = ""
    cpu_virt: bool = False
    pvm: bool = False


def kvm_verdict(facts: KvmFacts) -> Check:
    name = "kvm"
    if not facts.exists:
        return Check(
            name,
            "fail",
            "/dev/kvm does not exist: no hardware virtualisation (or nested KVM) here",
            "enable VT-x/AMD-V in the firmware, load kvm_intel/kvm_amd, or nested virtualisation "
            "for a VM; the microvm driver stays off until then (bwrap sandboxes still work)",
        )
    if facts.open_error:
        return Check(
            name,
            "fail",
            f"/dev/kvm cannot be opened read-write: {facts.open_error}",
            "add this user to the kvm group (usermod -aG kvm USER) and log in again",
        )
    if facts.api_version != 12:
        return Check(
            name,
            "fail",
            f"KVM_GET_API_VERSION answered {facts.api_version} (12 expected)",
            "use a kernel with the stable KVM API (any Linux since 2.6.22)",
        )
    if facts.vm_error:
        return Check(
            name,
            "fail",
            f"KVM_CREATE_VM failed: {facts.vm_error}",
            "another hypervisor may hold VT-x (VirtualBox?), or the kvm module is broken; "
            "see dmesg",
        )
    if not facts.cpu_virt:
        how = " (the kvm_pvm module: software nested virtualisation)" if facts.pvm else ""
        return Check(
            name,
            "fail",
            "/dev/kvm answers (API 12, KVM_CREATE_VM works) but the CPU flags have no "
            f"VT-x/AMD-V{how}: it runs only specially built guest kernels, a stock one hangs",
            "run on hardware with VT-x/AMD-V, or a VM with nested virtualisation exposing vmx/svm; "
            "the microvm driver stays off until then (bwrap sandboxes still work)",
        )
    return Check(name, "ok", "/dev/kvm: API 12, a VM can be created, VT-x/AMD-V present")


def clock_verdict(server: str, skew: float | None, error: str = "") -> Check:
    """``skew``: this host's clock minus the server's, seconds (None: not measured)."""
    name = f"clock {server}"
    if skew is None:
        return Check(
            name,
            "fail",
            f"could not read the server's time: {error}",
            f"check that {server} is up and reachable from here (aether status --server {server})",
        )
    ahead = "ahead of" if skew > 0 else "behind"
    detail = f"{abs(skew):.1f} s {ahead} the server"
    fix = "run an NTP client on every host (systemctl enable --now systemd-timesyncd or chrony)"
    if abs(skew) > CLOCK_FAIL_SECONDS:
        return Check(name, "fail", detail, fix)
    if abs(skew) > CLOCK_WARN_SECONDS:
        return Check(name, "warn", detail, fix)
    return Check(name, "ok", detail)


def port_verdict(what: str, host: str, port: int, error: str, aether_there: bool) -> Check:
    """``error``: why binding ``host:port`` failed ("" when it bound)."""
    name = f"port {what}"
    where = f"{host}:{port}"
    if not error:
        return Check(name, "ok", f"{where} is free")
    if aether_there:
        return Check(
            name,
            "warn",
            f"{where} is in use by an Aether server that answers there (already running?)",
            "nothing to do if that is this host's server; else stop it or pick another port",
        )
    return Check(
        name,
        "fail",
        f"{where} cannot be bound: {error}",
        f"stop what listens there (ss -ltnp 'sport = :{port}') or choose another port",
    )


@dataclass(frozen=True, slots=True)
class DirFacts:
    """A data directory as found: ``exists``; when it does, its mode, owner and whether
    we can write it; when not, the nearest existing ancestor and whether it is writable."""

    path: str
    exists: bool
    is_dir: bool = True
    mode: int = 0
    owner: int = 0
    uid: int = 0  # ours
    writable: bool = False
    ancestor: str = ""
    ancestor_writable: bool = False


def data_dir_verdict(facts: DirFacts) -> Check:
    name = "data dir"
    path = facts.path
    if not facts.exists:
        if facts.ancestor_writable:
            return Check(name, "ok", f"{path} does not exist yet; it will be created")
        return Check(
            name,
            "fail",
            f"{path} does not exist and {facts.ancestor} is not writable",
            f"mkdir -p {path} && chown $(id -un) {path} && chmod 700 {path}",
        )
    if not facts.is_dir:
        return Check(name, "fail", f"{path} is not a directory", "point --data-dir elsewhere")
    if facts.owner != facts.uid:
        return Check(
            name,
            "fail",
            f"{path} is owned by uid {facts.owner}, not by this user (uid {facts.uid})",
            f"chown -R {facts.uid} {path} (or run Aether as its owner)",
        )
    if facts.mode & 0o022:
        return Check(
            name,
            "fail",
            f"{path} has mode {facts.mode & 0o7777:04o}: others can write it (it holds the "
            "secrets key and the state)",
            f"chmod 700 {path}",
        )
    if not facts.writable:
        return Check(name, "fail", f"{path} is not writable", f"chmod u+rwx {path}")
    return Check(name, "ok", f"{path}: owned by uid {facts.uid}, mode {facts.mode & 0o7777:04o}")


def disk_verdict(path: str, free: int, total: int) -> Check:
    name = "disk space"
    gib = free / (1 << 30)
    detail = f"{gib:.1f} GiB free of {total / (1 << 30):.1f} GiB at {path}"
    fix = f"free space on the file system of {path} (artifacts, logs and snapshots live there)"
    if free < DISK_FAIL_BYTES:
        return Check(name, "fail", detail, fix)
    if free < DISK_WARN_BYTES:
        return Check(name, "warn", detail, fix)
    return Check(name, "ok", detail)


@dataclass(frozen=True)
class DoctorOptions:
    """What to check: the settings the server reads (``ServerSettings``), the roles,
    the node's router port and data dir, the servers to compare clocks with (and the
    TLS context to reach https ones), checks to ``skip`` by name prefix."""

    settings: Any  # aether.server.settings.ServerSettings (imported lazily)
    roles: tuple[str, ...] = ("server", "node")
    router_host: str = "127.0.0.1"
    router_port: int = 8080
    servers: tuple[str, ...] = ()
    server_tls: Any = None  # ssl.SSLContext for https servers, or None
    skip: tuple[str, ...] = ()
    timeout: float = 2.0


def render(checks: list[Check]) -> str:
    """One line per check (and its fix under it), then a summary line."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.status in ("warn", "fail"):
            lines.append(f"      {'':<{width}}  fix: {c.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail", "skip")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)

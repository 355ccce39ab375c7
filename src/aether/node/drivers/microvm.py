"""The ``microvm`` driver: one QEMU/KVM virtual machine per sandbox.

The machine boots the host's Debian kernel (``/boot/vmlinuz-*``) with a small
initramfs the driver builds into its cache directory: a static busybox, the
virtio modules of that kernel and ``/init``, a guest helper in shell. The
workspace is shared with the host over 9p (``/workspace``, so it persists on
the node and survives the VM), the host's ``/usr`` is shared read-only so the
guest has the same tools as a ``bwrap`` sandbox (python3, git, ...), and the
helper talks to the node over four virtio-serial ports: ``ctl`` (one line per
request and reply), ``in`` (stdin bytes), ``out`` and ``err`` (the streams).

Per execution the helper runs the command in its own session as the guest's
root, streams stdout and stderr to the host (which caps them as every driver
does), then kills whatever the command left running and replies ``DONE`` with
the exit status, the byte counts (so the host knows when it has every byte) and
whether the guest's OOM killer fired. Executions in one sandbox run one at a
time.

What the limits enforce: ``memory_mb`` + 64 MiB (for the guest kernel; at
least 128) is the VM's RAM, a total for everything in the sandbox; exceeding it
wakes the guest's OOM killer (``killed_reason="memory limit"``). ``vcpus`` is
the VM's CPU count. CPU time per process is ``ulimit -t`` of ``ceil(timeout *
vcpus) + 1`` s. The wall-clock timeout kills the command's session through the
helper, and the VM itself when the helper does not answer. There is no process
count limit (the guest's root is exempt; the VM bounds the damage). The network
is off (no NIC) unless asked for, then QEMU's user-mode NAT (the host is
10.0.2.2). QEMU runs as the same per-sandbox unprivileged uid as ``bwrap`` when
the node is root and the paths are reachable, and dies with the node; after a
restart ``load`` re-attaches and the next execution boots the VM again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import math
import os
import re
import shlex
import shutil
import stat
import struct
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aether.errors import BadRequestError
from aether.node.drivers.base import (
    WORKSPACE_DIR,
    Ability,
    ExecResult,
    Execution,
    SandboxError,
    SandboxHandle,
    SandboxSpec,
    utcnow,
)
from aether.node.drivers.bwrap_args import host_uid_for
from aether.node.drivers.execution import OutputCap, RawRun
from aether.node.drivers.spawn import base_env, spawn
from aether.node.drivers.workspace import WorkspaceSandboxes

__all__ = ["MicroVMDriver", "missing_prerequisites"]

log = logging.getLogger("aether.node.drivers")

_QEMU = "qemu-system-x86_64"
_BUSYBOX = ("/usr/bin/busybox", "/bin/busybox")
_BOOT_TIMEOUT = 60.0
_KILL_GRACE = 5.0  # seconds for the guest helper to answer a KILL before the VM goes
_DRAIN_TIMEOUT = 10.0  # seconds for the last stream bytes after DONE
_MODULES = ("virtio_pci", "virtio_console", "9pnet_virtio", "9p", "virtio_net")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/aether/bin"
_GUEST_VERSION = "1"

# /init of the guest: mounts, modules, ports, then the helper's loop on the ctl port.
_INIT = r"""#!/aether/bin/sh
export PATH=/aether/bin
/aether/bin/busybox --install -s /aether/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
say() { echo "aether-guest: $*" > /dev/console; }
for m in $(cat /aether/modules/order); do
  insmod "/aether/modules/$m" || say "insmod $m failed"
done
hostname sandbox
ip link set lo up
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro usr /usr || say "no /usr"
for d in bin sbin lib lib32 lib64 libx32; do
  [ -e "/usr/$d" ] && [ ! -e "/$d" ] && ln -s "usr/$d" "/$d"
done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none workspace /workspace \
  || { say "no workspace"; poweroff -f; }
if grep -q 'aether.net=1' /proc/cmdline; then
  ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
  echo "nameserver 10.0.2.3" > /etc/resolv.conf
fi
i=0
while :; do
  for p in /sys/class/virtio-ports/*; do
    [ -e "$p/name" ] || continue
    n=$(cat "$p/name"); d="/dev/${p##*/}"
    [ -n "$n" ] && [ -e "$d" ] && ln -sf "$d" "/dev/aether-$n"
  done
  [ -e /dev/aether-ctl ] && [ -e /dev/aether-out ] && [ -e /dev/aether-err ] \
    && [ -e /dev/aether-in ] && break
  i=$((i + 1)); [ $i -gt 1000 ] && { say "no ports"; poweroff -f; }
  usleep 10000
done

sweep() {  # kill the command's session: everything it started
  sid=$(cat /run/sid 2>/dev/null)
  [ -n "$sid" ] || return 0
  for round in 1 2 3; do
    for s in /proc/[0-9]*/stat; do
      read -r pid comm state ppid pgrp session rest < "$s" 2>/dev/null || continue
      [ "$session" = "$sid" ] && kill -9 "$pid" 2>/dev/null
    done
  done
  return 0
}

run() {  # id stdin-length script-base64
  echo "$3" | base64 -d > /run/req.sh
  if [ "$2" -gt 0 ]; then head -c "$2" /dev/aether-in > /run/stdin; else : > /run/stdin; fi
  rm -f /run/rc /run/sid /run/outn /run/errn
  oom0=$(dmesg | grep -c 'Out of memory')
  {
    { setsid sh /run/req.sh < /run/stdin 2>&4 4>&-; echo $? > /run/rc; sweep; } 2>/dev/null \
      | tee /dev/aether-out | wc -c > /run/outn
  } 4>&1 | tee /dev/aether-err | wc -c > /run/errn
  oom1=$(dmesg | grep -c 'Out of memory')
  rc=$(cat /run/rc 2>/dev/null || echo 137)
  echo "DONE $1 $rc $(cat /run/outn) $(cat /run/errn) $((oom1 - oom0))" >&3
}

mkdir -p /run
grep -q 'aether.debug=1' /proc/cmdline && set -x
exec 3<>/dev/aether-ctl
while :; do  # reads see end-of-file while no host is connected: wait for one
  while read -r verb a b c <&3; do
    case "$verb" in
      PING) echo "PONG $a" >&3 ;;
      RUN) run "$a" "$b" "$c" & ;;
      KILL) sweep ;;
      STOP) sync; poweroff -f ;;
    esac
  done
  usleep 50000
done
"""


# -- prerequisites and the image ------------------------------------------------


def _kernel() -> tuple[Path, Path] | None:
    """The newest ``/boot/vmlinuz-*`` whose modules are installed, and that directory."""
    found = []
    for image in Path("/boot").glob("vmlinuz-*"):
        release = image.name.removeprefix("vmlinuz-")
        modules = Path("/lib/modules") / release
        if (modules / "modules.dep").is_file() and os.access(image, os.R_OK):
            found.append((image.stat().st_mtime, image, modules))
    if not found:
        return None
    _, image, modules = max(found)
    return image, modules


def _busybox() -> Path | None:
    """A statically linked busybox (busybox-static), which needs no libraries."""
    for candidate in _BUSYBOX:
        path = Path(candidate)
        if path.is_file() and _is_static_elf(path):
            return path
    return None


def _is_static_elf(path: Path) -> bool:
    """No PT_INTERP program header: the binary runs without a dynamic loader."""
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
                return False
            phoff = struct.unpack_from("<Q", head, 32)[0]
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
    except OSError:
        return False
    return all(
        struct.unpack_from("<I", table, i * phentsize)[0] != 3  # PT_INTERP
        for i in range(phnum)
    )


def _cpu_virtualisation() -> bool:
    """Whether the CPU exposes VT-x or AMD-V, without which KVM cannot run a normal guest.

    Some hosts offer /dev/kvm without it (software "PVM" nested virtualisation,
    which only runs specially built guest kernels); a stock kernel hangs there.
    """
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return "vmx" in flags or "svm" in flags
    except OSError:
        pass
    return False


def missing_prerequisites(accel: str = "kvm") -> list[str]:
    """What this machine lacks for microVMs, each with how to get it."""
    missing = []
    if accel == "kvm":
        if not os.path.exists("/dev/kvm"):
            missing.append("/dev/kvm (hardware virtualisation, or nested KVM for a VM)")
        elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
            missing.append("read-write access to /dev/kvm (the kvm group)")
        if not _cpu_virtualisation():
            missing.append(
                "VT-x/AMD-V in the CPU flags (/dev/kvm without them cannot boot a stock kernel)"
            )
    if shutil.which(_QEMU) is None:
        missing.append(f"{_QEMU}: apt-get install qemu-system-x86")
    if _kernel() is None:
        missing.append("a kernel in /boot with its modules: apt-get install linux-image-amd64")
    if _busybox() is None:
        missing.append("a static busybox: apt-get install busybox-static")
    return missing


def _module_order(modules_dir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The ``.ko`` files for ``wanted`` and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        name, _, rest = line.partition(":")
        deps[name] = rest.split()
    by_name = {Path(p).name.split(".ko")[0].replace("-", "_"): p for p in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in reversed(deps.get(path, [])):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name in by_name:
            visit(by_name[name])
    return [modules_dir / p for p in order]


class _Cpio:
    """A newc ("070701") archive, the format the kernel unpacks as initramfs."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ino = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        encoded = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.parts.append(header + encoded + b"\0" * (-(110 + len(encoded)) % 4))
        self.parts.append(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def bytes(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self.parts)


def _etc_entries(archive: _Cpio) -> None:
    archive.dir("etc")
    archive.file("etc/passwd", b"root:x:0:0:root:/workspace:/bin/sh\n")
    archive.file("etc/group", b"root:x:0:\n")
    archive.file("etc/hosts", b"127.0.0.1\tlocalhost sandbox\n::1\tlocalhost\n")
    archive.file("etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")
    alternatives = Path("/etc/alternatives")
    if alternatives.is_dir():  # Debian's awk, editor, ... are symlinks through here
        archive.dir("etc/alternatives")
        for link in sorted(alternatives.iterdir()):
            if link.is_symlink():
                archive.symlink(f"etc/alternatives/{link.name}", os.readlink(link))
    for name in ("ld.so.cache", "services", "protocols", "localtime"):
        path = Path("/etc") / name
        with contextlib.suppress(OSError):
            archive.file(f"etc/{name}", path.read_bytes())
    for name in ("ssl", "ca-certificates"):  # TLS roots, for sandboxes with network
        root = Path("/etc") / name
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            rel = f"etc/{path.relative_to('/etc')}"
            if path.is_symlink():
                archive.symlink(rel, os.readlink(path))
            elif path.is_dir():
                archive.dir(rel)
            elif path.is_file() and os.access(path, os.R_OK) and "private" not in path.parts:
                archive.file(rel, path.read_bytes())


@dataclass(frozen=True)
class _Image:
    kernel: Path
    initrd: Path


def build_image(cache_dir: Path) -> _Image:
    """Build (once per kernel, busybox and guest helper) the initramfs; reuse it after."""
    kernel = _kernel()
    busybox = _busybox()
    if kernel is None or busybox is None:
        raise SandboxError(
            "microVM prerequisites missing: " + "; ".join(missing_prerequisites("tcg"))
        )
    image, modules_dir = kernel
    bb = busybox.stat()
    key = hashlib.sha256(
        f"{_GUEST_VERSION}|{image}|{image.stat().st_mtime}|{bb.st_size}|{bb.st_mtime}|{_INIT}".encode()
    ).hexdigest()[:16]
    initrd = cache_dir / f"initramfs-{modules_dir.name}-{key}.cpio"
    if not initrd.exists():
        archive = _Cpio()
        for name in ("aether", "aether/bin", "aether/modules", "dev", "proc", "sys", "tmp", "run"):
            archive.dir(name)
        archive.dir("usr")
        archive.dir("workspace")
        archive.dir("root")
        archive.chardev("dev/console", 5, 1)
        archive.chardev("dev/null", 1, 3)
        archive.file("aether/bin/busybox", busybox.read_bytes(), 0o755)
        archive.symlink("aether/bin/sh", "busybox")
        archive.file("init", _INIT.encode(), 0o755)
        modules = _module_order(modules_dir, _MODULES)
        for module in modules:
            archive.file(f"aether/modules/{module.name}", module.read_bytes())
        order = "".join(f"{m.name}\n" for m in modules)
        archive.file("aether/modules/order", order.encode())
        _etc_entries(archive)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = initrd.with_suffix(f".tmp-{os.getpid()}-{uuid.uuid4().hex}")
        tmp.write_bytes(archive.bytes())
        os.chmod(tmp, 0o644)
        os.replace(tmp, initrd)
    return _Image(kernel=image, initrd=initrd)


# -- a running VM -------------------------------------------------------------


@dataclass
class _Run:
    """The execution the stream pumps currently feed."""

    stdout: OutputCap
    stderr: OutputCap
    received: list[int] = field(default_factory=lambda: [0, 0])
    progress: asyncio.Event = field(default_factory=asyncio.Event)


class _VM:
    def __init__(self, process: asyncio.subprocess.Process, vm_dir: Path) -> None:
        self.process = process
        self.vm_dir = vm_dir
        self.lock = asyncio.Lock()
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self.current: _Run | None = None
        self.ctl: asyncio.StreamWriter | None = None
        self.stdin: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.seq = 0

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def connect(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        streams: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        for name in ("c", "o", "e", "i"):
            path = self.vm_dir / name
            while True:
                try:
                    streams[name] = await asyncio.open_unix_connection(str(path))
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    if not self.alive or loop.time() > deadline:
                        raise SandboxError(f"the VM did not start: {self.console_tail()}") from None
                    await asyncio.sleep(0.02)
        self.ctl = streams["c"][1]
        self.stdin = streams["i"][1]
        # a dropped StreamWriter closes its socket, and the guest then sees the port
        # as disconnected: keep the read-only ones too
        self.writers = [writer for _, writer in streams.values()]
        self.tasks = [
            asyncio.ensure_future(self._read_lines(streams["c"][0])),
            asyncio.ensure_future(self._pump(streams["o"][0], 0)),
            asyncio.ensure_future(self._pump(streams["e"][0], 1)),
        ]

    async def _read_lines(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            await self.lines.put(line.decode(errors="replace").strip())
        await self.lines.put("")  # closed

    async def _pump(self, reader: asyncio.StreamReader, index: int) -> None:
        while chunk := await reader.read(1 << 16):
            run = self.current
            if run is None:
                continue  # bytes of an abandoned execution
            (run.stdout if index == 0 else run.stderr).feed(chunk)
            run.received[index] += len(chunk)
            run.progress.set()

    async def send(self, line: str) -> None:
        assert self.ctl is not None
        self.ctl.write(line.encode() + b"\n")
        await self.ctl.drain()

    async def reply(self, prefix: str, timeout: float) -> list[str]:
        """The next control line starting with ``prefix``, split in words."""
        async with asyncio.timeout(timeout):
            while True:
                line = await self.lines.get()
                if not line:
                    raise SandboxError(f"the VM's guest helper went away: {self.console_tail()}")
                if line.startswith(prefix):
                    return line.split()

    def console_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.vm_dir / "console.log").read_text(errors="replace")[-2000:]
        return ""

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in self.writers:
            writer.close()
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        with contextlib.suppress(ProcessLookupError):
            await self.process.wait()


class MicroVMDriver(WorkspaceSandboxes):
    name = "microvm"
    isolated = True
    abilities: frozenset[Ability] = frozenset({"sandboxes", "reattach"})

    def __init__(
        self, cache_dir: Path | None = None, *, accel: str = "kvm", debug: bool = False
    ) -> None:
        """``accel="tcg"`` emulates the CPU in software: slow, for machines without KVM.

        ``debug`` traces the guest helper and the kernel on the VM's console log.
        """
        super().__init__()
        if accel not in ("kvm", "tcg"):
            raise ValueError(f"accel must be kvm or tcg, not {accel!r}")
        self._cache_dir = cache_dir
        self._accel = accel
        self._debug = debug
        self._vms: dict[str, _VM] = {}
        self._boot_locks: dict[str, asyncio.Lock] = {}

    @property
    def accel(self) -> str:
        return self._accel

    def available(self) -> bool:
        return not missing_prerequisites(self._accel)

    def _cache(self, spec: SandboxSpec) -> Path:
        return self._cache_dir or spec.root.parent / ".microvm-cache"

    # -- lifecycle ------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        missing = missing_prerequisites(self._accel)
        if missing:
            raise SandboxError("microVMs are not available here: " + "; ".join(missing))
        if spec.ro_paths:
            raise BadRequestError("the microvm driver does not share extra host paths yet")
        handle = await super().create(spec)
        try:
            await self._ensure_vm(handle)
        except BaseException:
            await self.delete(handle)
            raise
        return handle

    def _prepare(self, spec: SandboxSpec) -> dict[str, Any]:
        vm_dir = spec.root / "vm"
        vm_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(spec.root, 0o711)
        host_uid: int | None = None
        if os.geteuid() == 0 and _reachable(spec.root):
            host_uid = host_uid_for(spec.id)
            for path in (vm_dir, spec.root / WORKSPACE_DIR):
                os.chown(path, host_uid, host_uid)
        return {"host_uid": host_uid}

    async def delete(self, handle: SandboxHandle) -> None:
        vm = self._vms.pop(handle.id, None)
        self._boot_locks.pop(handle.id, None)
        if vm is not None:
            await vm.stop()
        await super().delete(handle)

    async def _ensure_vm(self, handle: SandboxHandle) -> _VM:
        """The sandbox's running VM, booted now if it is not (first use, after a restart)."""
        async with self._boot_locks.setdefault(handle.id, asyncio.Lock()):
            vm = self._vms.get(handle.id)
            if vm is not None and vm.alive:
                return vm
            if vm is not None:
                await vm.stop()
            vm = await self._boot(handle)
            self._vms[handle.id] = vm
            return vm

    async def _boot(self, handle: SandboxHandle) -> _VM:
        spec = handle.spec
        cache = self._cache(spec)
        image = await asyncio.to_thread(build_image, cache)
        vm_dir = spec.root / "vm"
        for name in ("c", "o", "e", "i"):
            with contextlib.suppress(FileNotFoundError):
                (vm_dir / name).unlink()
            if len(str(vm_dir / name)) > 100:
                raise SandboxError(f"sandbox path too long for a unix socket: {vm_dir}")
        host_uid = handle.extra.get("host_uid")
        popen: dict[str, Any] = {}
        if isinstance(host_uid, int) and _reachable(cache / "x") and _reachable(image.kernel):
            groups = [os.stat("/dev/kvm").st_gid] if self._accel == "kvm" else []
            popen = {"user": host_uid, "group": host_uid, "extra_groups": groups}
        elif isinstance(host_uid, int):
            log.warning(
                "sandbox %s: VM image not reachable by uid %s; QEMU runs as root", spec.id, host_uid
            )
        memory = max(spec.memory_mb + 64, 128)
        argv = [
            shutil.which(_QEMU) or _QEMU,
            "-name", f"aether-{spec.id}",
            "-machine", f"pc,accel={self._accel}",
            "-cpu", "host" if self._accel == "kvm" else "max",
            "-m", str(memory),
            "-smp", str(spec.vcpus),
            "-nodefaults", "-no-user-config", "-no-reboot",
            "-display", "none", "-monitor", "none",
            "-kernel", str(image.kernel),
            "-initrd", str(image.initrd),
            "-append", "console=ttyS0 panic=-1 rdinit=/init"
            + (" loglevel=7 aether.debug=1" if self._debug else " loglevel=4")
            + (" aether.net=1" if spec.network else ""),
            "-serial", f"file:{vm_dir / 'console.log'}",
            "-device", "virtio-serial-pci,id=vs",
        ]  # fmt: skip
        for name, port in (("c", "ctl"), ("o", "out"), ("e", "err"), ("i", "in")):
            argv += [
                "-chardev", f"socket,id={port},path={vm_dir / name},server=on,wait=off",
                "-device", f"virtserialport,bus=vs.0,chardev={port},name={port}",
            ]  # fmt: skip
        argv += [
            "-fsdev", f"local,id=ws,path={handle.workspace},security_model=none",
            "-device", "virtio-9p-pci,fsdev=ws,mount_tag=workspace",
            "-fsdev", "local,id=usr,path=/usr,security_model=none,readonly=on",
            "-device", "virtio-9p-pci,fsdev=usr,mount_tag=usr",
        ]  # fmt: skip
        argv += ["-nic", "user,model=virtio-net-pci"] if spec.network else ["-nic", "none"]
        try:
            process = await spawn(
                argv, env=base_env({}, home="/"), cwd="/", log_path=vm_dir / "qemu.log", **popen
            )
        except OSError as exc:
            raise SandboxError(f"cannot start QEMU: {exc}") from exc
        vm = _VM(process, vm_dir)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _BOOT_TIMEOUT
        try:
            await vm.connect(deadline)
            while True:  # the helper answers once it has booted and opened its port
                vm.seq += 1
                await vm.send(f"PING {vm.seq}")
                try:
                    await vm.reply(f"PONG {vm.seq}", 0.5)
                    break
                except TimeoutError:
                    if not vm.alive or loop.time() > deadline:
                        raise SandboxError(
                            f"the VM did not boot: {vm.console_tail()}"
                            + (vm_dir / "qemu.log").read_text(errors="replace")[-1000:]
                        ) from None
        except BaseException:
            await vm.stop()
            raise
        return vm

    # -- executions -------------------------------------------------------------

    async def _execute(self, handle: SandboxHandle, execution: Execution) -> ExecResult:
        command, args, env = execution.command, execution.args, execution.env
        for key in env or {}:
            if not _ENV_NAME.match(key):
                raise BadRequestError(f"invalid environment variable name {key!r}")
        script = self._script(handle.spec, command, args, env, execution.timeout)
        vm = await self._ensure_vm(handle)
        async with vm.lock:
            return await self._run(
                vm, script, execution.stdin or b"", execution.timeout, execution.output_limit
            )

    @staticmethod
    def _script(
        spec: SandboxSpec, command: str, args: list[str], env: dict[str, str] | None, timeout: float
    ) -> str:
        variables = {"PATH": _PATH, "HOME": "/workspace", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
        variables.update(env or {})
        cpu = math.ceil(timeout * spec.vcpus) + 1
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in variables.items())
        argv = " ".join(shlex.quote(a) for a in [command, *args])
        return (
            "echo $$ > /run/sid\n"
            "cd /workspace || exit 125\n"
            f"export {exports}\n"
            f"ulimit -t {cpu}\n"
            f"exec {argv}\n"
        )

    async def _run(
        self, vm: _VM, script: str, stdin: bytes, timeout: float, output_limit: int
    ) -> ExecResult:
        loop = asyncio.get_running_loop()
        run = _Run(OutputCap(output_limit), OutputCap(output_limit))
        vm.current = run
        vm.seq += 1
        ident = str(vm.seq)
        started = utcnow()
        encoded = base64.b64encode(script.encode()).decode()
        timed_out = False
        try:
            await vm.send(f"RUN {ident} {len(stdin)} {encoded}")
            if stdin:
                assert vm.stdin is not None
                vm.stdin.write(stdin)
                await vm.stdin.drain()
            try:
                done = await vm.reply(f"DONE {ident} ", timeout)
            except TimeoutError:
                timed_out = True
                await vm.send("KILL")
                try:
                    done = await vm.reply(f"DONE {ident} ", _KILL_GRACE)
                except TimeoutError:
                    log.warning(
                        "the VM's guest helper did not stop a timed-out command; restarting the VM"
                    )
                    await vm.stop()
                    done = ["DONE", ident, "137", "-1", "-1", "0"]
            code, out_n, err_n, ooms = (int(x) for x in done[2:6])
            deadline = loop.time() + _DRAIN_TIMEOUT
            while (out_n >= 0 and run.received[0] < out_n) or (
                err_n >= 0 and run.received[1] < err_n
            ):
                run.progress.clear()
                remaining = deadline - loop.time()
                if remaining <= 0 or not vm.alive:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await run.progress.wait()
        except BaseException:
            await vm.stop()  # a broken conversation: start clean next time
            raise
        finally:
            vm.current = None
        raw = RawRun(
            returncode=code,
            stdout=run.stdout,
            stderr=run.stderr,
            timed_out=timed_out,
            started_at=started,
            finished_at=utcnow(),
        )
        result = raw.result(limits=True)
        if ooms > 0 and code != 0 and not timed_out:
            result = replace(result, killed_reason="memory limit")
        return result


def _reachable(path: Path) -> bool:
    """Whether an unrelated unprivileged uid can traverse to ``path``."""
    try:
        return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in path.parents)
    except OSError:
        return False

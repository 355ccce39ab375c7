"""The ``bwrap`` driver's ``instances`` ability: every app instance in a bubblewrap sandbox.

What an instance sees (the node is root, the default):

- its own unprivileged host uid (``host_uid_for(instance_id, seed="instance")``),
  no capabilities, ``no_new_privs``: bwrap runs as root *without* a user
  namespace (mounts are made as root, so the node's directories need not be
  traversable by others), then ``setpriv`` drops to that uid inside;
- the system read-only (``/usr``, ``/bin``, ``/lib*``), a synthesised ``/etc``
  (its own user only; DNS and TLS roots), private ``/proc`` (own PID namespace:
  it sees only its own processes), ``/dev``, and tmpfs ``/tmp`` and
  ``/dev/shm``; IPC and UTS namespaces of its own;
- its instance directory at ``/instance`` (``/instance/app`` is the cwd and
  ``HOME``), of which only the directories the runner names are writable, and
  nothing else of the node: not the node's or the server's data, not other
  instances;
- the host network namespace: instances listen on a port the node's router and
  health check reach on 127.0.0.1 (no per-instance network isolation yet).

A node that is not root runs bwrap with a user namespace instead: the instance
runs as the node's uid (mapped), with the same mounts and namespaces.

Limits (rlimits set by ``prlimit`` inside, what ``limits`` reports):

- memory: ``RLIMIT_DATA`` of ``max(memory_mb, 512)`` MiB per process (private
  writable memory: heap, anonymous mappings, thread stacks). It counts what a
  process reserves, not what it touches, so the floor keeps threaded servers and
  V8 working at the default 64 MiB reservation (a Python ``ThreadingHTTPServer``
  refuses threads at about 8 per 64 MiB). Per process, not a total.
- processes: ``RLIMIT_NPROC`` of 1024 processes and threads for the instance's
  uid (per instance when the node is root).
- cpu: not enforced (``RLIMIT_CPU`` would kill long-running services; a cgroup
  v2 ``cpu.max`` is not set up).

The handle's ``pid`` is the app's process (outside view), so signals
(checkpoint's SIGUSR1) and telemetry reach the app, not bwrap. ``stop`` sends
SIGTERM to the app's process group, waits ``grace``, then SIGKILLs the
sandbox's init (the PID namespace dies with it). The exit status is bwrap's:
the app's exit code, or 128 + N when a signal N ended it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from aether.node.drivers.base import MIB, Handle, LaunchSpec
from aether.node.drivers.bwrap_args import (
    PRLIMIT,
    SETPRIV,
    MemFds,
    etc_args,
    host_uid_for,
    system_args,
)
from aether.node.drivers.spawn import base_env, signal_group, spawn

__all__ = ["INSIDE", "BwrapInstances", "SandboxedInstance"]

INSIDE = "/instance"  # where the instance's directory is shown
MEMORY_FLOOR_MB = 512
MAX_PROCESSES = 1024
_UID_SEED = "instance"
_START_TIMEOUT = 10.0


class SandboxedInstance:
    """A running sandbox: bwrap's process, its init and the app inside (outside pids)."""

    def __init__(self, process: asyncio.subprocess.Process, init: int | None, app: int | None):
        self.process = process
        self.init = init
        self.app = app

    @property
    def pid(self) -> int:
        return self.app or self.init or self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        return await self.process.wait()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


class BwrapInstances:
    """Starting and stopping instances (mixed into ``BwrapDriver``)."""

    _bwrap: str | None
    as_root: bool
    reason: str  # why the driver is not available here ("" when it is)

    def _instance_limits(self) -> dict[str, str]:
        return {
            "memory": f"RLIMIT_DATA max(memory_mb, {MEMORY_FLOOR_MB}) MiB per process",
            "cpu": "not enforced",
            "processes": f"RLIMIT_NPROC {MAX_PROCESSES}"
            + (" per instance uid" if self.as_root else " (user namespace)"),
        }

    @property
    def mode(self) -> str:
        """How instances are confined, for the node's capabilities."""
        if self.as_root:
            return "bwrap, an unprivileged uid per instance (setpriv), no user namespace"
        return f"bwrap in a user namespace as the node's uid {os.getuid()}"

    @abc.abstractmethod
    def available(self) -> bool:
        """The driver's: both abilities' probes passed."""

    def _probe_instances(self) -> tuple[bool, str]:
        """Run a trivial instance sandbox once to see that it works here."""
        if not self._bwrap:
            return False, "bubblewrap is not installed (apt-get install bubblewrap)"
        needed = [PRLIMIT] + ([SETPRIV] if self.as_root else [])
        missing = [tool for tool in needed if not os.access(tool, os.X_OK)]
        if missing:
            return False, f"{', '.join(missing)} missing (apt-get install util-linux)"
        fds = MemFds()
        try:
            argv = self._argv(LaunchSpec(command="true", cwd=Path("/")), "probe", fds, info_fd=None)
            done = subprocess.run(
                argv,
                capture_output=True,
                timeout=10,
                cwd="/",
                check=False,
                env=base_env({}, home="/"),
                pass_fds=fds.fds,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"bubblewrap could not run: {exc}"
        finally:
            fds.close()
        if done.returncode != 0:
            error = done.stderr.decode(errors="replace").strip()[-300:]
            return (
                False,
                f"bubblewrap failed ({error or done.returncode}); user namespaces refused?",
            )
        return True, ""

    def host_uid(self, instance_id: str) -> int | None:
        return host_uid_for(instance_id, seed=_UID_SEED) if self.as_root else None

    # -- lifecycle ----------------------------------------------------------

    async def start(self, spec: LaunchSpec) -> SandboxedInstance:
        if not self.available():
            raise OSError(f"app instances cannot be sandboxed here: {self.reason}")
        fds = MemFds()
        try:
            info = fds.add("bwrap-info", b"")
            argv = self._argv(spec, spec.instance_id, fds, info_fd=info)
            env = {k: self._inside(spec, v) for k, v in spec.env.items()}
            process = await spawn(
                argv,
                env=base_env(env, home=self._inside(spec, str(spec.cwd))),
                cwd="/",
                log_path=spec.log_path,
                pass_fds=fds.fds,
            )
            init, app = await self._pids(process, info)
        finally:
            fds.close()
        return SandboxedInstance(process, init, app)

    async def _pids(
        self, process: asyncio.subprocess.Process, info: int
    ) -> tuple[int | None, int | None]:
        """The sandbox's init (from ``--info-fd``) and the app it started (init's child)."""
        init: int | None = None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline and process.returncode is None:
            if init is None:
                with contextlib.suppress(ValueError, KeyError, OSError):
                    init = int(json.loads(os.pread(info, 4096, 0))["child-pid"])
            if init is not None:
                children = _children(init)
                if children:
                    return init, children[0]
            await asyncio.sleep(0.005)
        return init, None

    async def stop(self, handle: Handle, *, grace: float = 10.0) -> int:
        if handle.returncode is not None:
            return handle.returncode
        if not isinstance(handle, SandboxedInstance):
            raise TypeError(f"not a sandboxed instance: {handle!r}")
        # the app's group: init made a new session and the app is in it (init ignores it)
        signal_group(handle.init or handle.process.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                return await handle.wait()
        except TimeoutError:
            if handle.init is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(handle.init, signal.SIGKILL)  # the PID namespace goes with it
            signal_group(handle.process.pid, signal.SIGKILL)
            return await handle.wait()

    # -- argument building ----------------------------------------------------

    @staticmethod
    def _inside(spec: LaunchSpec, value: str) -> str:
        """A host path under the instance's directory as the instance sees it."""
        if spec.root is None:
            return value
        root = str(spec.root)
        if value == root or value.startswith(root + "/"):
            return INSIDE + value[len(root) :]
        return value

    def _argv(
        self, spec: LaunchSpec, instance_id: str, fds: MemFds, *, info_fd: int | None
    ) -> list[str]:
        uid = self.host_uid(instance_id)
        inner_uid = uid if uid is not None else os.getuid()
        tmp = str(max(spec.memory_mb, 64) * MIB)
        options = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if self.as_root:
            options += ["--cap-add", "CAP_SETUID,CAP_SETGID"]  # for setpriv, dropped by it
        else:
            options += ["--unshare-user", "--disable-userns"]
        options += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
        options += [*system_args(), "--proc", "/proc", "--dev", "/dev"]
        options += ["--perms", "01777", "--size", tmp, "--tmpfs", "/tmp"]
        options += ["--perms", "01777", "--size", tmp, "--tmpfs", "/dev/shm"]
        options += ["--dir", "/var", "--symlink", "../tmp", "/var/tmp"]
        home = self._inside(spec, str(spec.cwd))
        options += etc_args(fds, uid=inner_uid, user="app", home=home, network=True)
        options += ["--perms", "0755", "--dir", INSIDE]
        for path in spec.writable:
            options += ["--bind", str(path), self._inside(spec, str(path))]
        options += ["--chdir", home, "--remount-ro", "/"]
        if info_fd is not None:
            options += ["--info-fd", str(info_fd)]
        argv = [str(self._bwrap), "--args", str(fds.args_fd(options)), "--"]
        if uid is not None:
            argv += [
                SETPRIV,
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ]
        argv += [PRLIMIT, f"--nproc={MAX_PROCESSES}", "--core=0"]
        if spec.memory_mb > 0:
            argv.append(f"--data={max(spec.memory_mb, MEMORY_FLOOR_MB) * MIB}")
        return [*argv, "--", "/bin/sh", "-c", f"exec {spec.command}"]

"""The ``bwrap`` driver's ``sandboxes`` ability: each execution in fresh bubblewrap namespaces.

A sandbox is a workspace directory; each execution is one ``bwrap`` with its own
mount, pid, ipc, uts, user and (unless ``network``) network namespace, the
system (``/usr`` and the ``/bin``, ``/lib*``, ``/sbin`` links) read-only, a
minimal ``/etc`` (synthesised passwd, group, hosts; DNS and CA certificates
only with network), private ``/proc``, ``/dev``, ``/tmp`` and ``/dev/shm``, the
workspace read-write at ``/workspace`` (cwd, ``HOME``) and nothing else of the
node. The root is read-only, so the only writable places are the workspace and
the size-capped tmpfs mounts. Creating a sandbox only makes a directory.

What the limits enforce (rlimits, set by ``prlimit`` inside the sandbox):

- ``memory_mb``: RLIMIT_DATA per process, i.e. private writable memory (heap,
  anonymous mappings, thread stacks); allocations past it fail (``MemoryError``,
  ``ENOMEM``) and the run reports ``killed_reason="memory limit"``. It is per
  process, not a total for the sandbox (``max_processes`` bounds the product);
  ``/tmp`` and ``/dev/shm`` are tmpfs mounts of ``memory_mb`` each. A cgroup v2
  sub-tree would give one total; it is not used (rlimits work on every host).
- CPU: RLIMIT_CPU of ``ceil(timeout * vcpus) + 1`` seconds per process (SIGXCPU,
  then SIGKILL a second later): ``killed_reason="cpu time limit"``. A backstop:
  a single-threaded process cannot outspend the wall-clock timeout, so it fires
  only for busy multi-threaded processes. ``vcpus`` is otherwise not enforced
  (no CPU pinning or quota).
- ``max_processes``: RLIMIT_NPROC, counted by the kernel per user namespace for
  the sandbox's uid, so it bounds this execution's processes and threads. Root
  is exempt from RLIMIT_NPROC, so a root node runs ``bwrap`` as a per-sandbox
  unprivileged host uid (1.9e9 + a hash of the id): the sandbox is uid 65534
  inside and that uid outside, never root on the host. That needs the sandbox
  root and the read-only paths traversable by others (``o+x`` ancestors); when
  they are not, the driver falls back to mapping the sandbox uid to root (no
  capabilities, every namespace still in place, but no process limit and a
  kernel escape would land as root), logs it and records ``host_uid: None``.
- The wall-clock ``timeout`` kills ``bwrap``; its pid namespace dies with it,
  taking every process of the execution (``killed_reason="timeout"``).
- Disk use of the workspace is not limited (no quota).
"""

from __future__ import annotations

import abc
import logging
import math
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aether.node.drivers.base import (
    MIB,
    WORKSPACE_DIR,
    ExecResult,
    Execution,
    SandboxError,
    SandboxHandle,
    SandboxSpec,
)
from aether.node.drivers.bwrap_args import (
    HOST_UID_BASE,
    HOSTNAME,
    PRLIMIT,
    MemFds,
    etc_args,
    host_uid_for,
    system_args,
)
from aether.node.drivers.execution import run_capped
from aether.node.drivers.spawn import base_env, exec_as
from aether.node.drivers.workspace import WorkspaceSandboxes

__all__ = ["SANDBOX_UID", "BwrapSandboxes"]

log = logging.getLogger("aether.node.drivers")

SANDBOX_UID = 65534  # the uid and gid commands see inside


def _others_can_reach(path: Path, *, read: bool = False) -> bool:
    """Whether a uid with no relation to ``path``'s owners can traverse to it."""
    try:
        for parent in path.parents:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        if read:
            mode = os.stat(path).st_mode
            need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
            return mode & need == need
    except OSError:
        return False
    return True


class BwrapSandboxes(WorkspaceSandboxes):
    """Sandboxes for tasks; mixed into :class:`~aether.node.drivers.bwrap.BwrapDriver`."""

    _bwrap: str | None
    _probe: dict[int | None, bool]
    _setpriv: bool  # whether executions start through ``exec_as``

    @abc.abstractmethod
    def available(self) -> bool:
        """The driver's: both abilities' probes passed."""

    def _works(self, uid: int | None) -> bool:
        """Run a trivial sandbox once (as ``uid``) to see that namespaces work here."""
        if uid not in self._probe:
            self._probe[uid] = self._run_probe(uid)
        return self._probe[uid]

    def _run_probe(self, uid: int | None) -> bool:
        if not self._bwrap or not os.access(PRLIMIT, os.X_OK):
            return False
        argv = [
            self._bwrap,
            *self._namespace_args(network=False),
            *system_args(),
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--",
            PRLIMIT,
            "--nproc=16",
            "--",
            "/usr/bin/true",
        ]
        extra: dict[str, Any] = {}
        if uid is not None:
            extra = {"user": uid, "group": uid, "extra_groups": []}
        try:
            done = subprocess.run(
                argv, capture_output=True, timeout=10, cwd="/", check=False, **extra
            )
        except (OSError, subprocess.SubprocessError):
            return False
        if done.returncode != 0:
            log.info("bwrap probe (uid %s) failed: %s", uid, done.stderr.decode(errors="replace"))
        return done.returncode == 0

    # -- lifecycle ----------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        if not self.available():
            raise SandboxError(
                "bubblewrap is not usable here (apt-get install bubblewrap; "
                "user namespaces must be allowed)"
            )
        return await super().create(spec)

    def _prepare(self, spec: SandboxSpec) -> dict[str, Any]:
        host_uid: int | None = None
        if os.geteuid() == 0:
            reachable = _others_can_reach(spec.root) and all(
                _others_can_reach(p, read=True) for p in spec.ro_paths
            )
            # whether the kernel lets an unprivileged uid make namespaces does not
            # depend on which uid: probe once with the first of the range
            if reachable and self._works(HOST_UID_BASE):
                host_uid = host_uid_for(spec.id)
            else:
                log.warning(
                    "sandbox %s: its root or read-only paths are not reachable by an "
                    "unprivileged uid (or user namespaces are refused to one); running it "
                    "mapped to root, without the process limit",
                    spec.id,
                )
        os.chmod(spec.root, 0o711)
        workspace = spec.root / WORKSPACE_DIR
        if host_uid is not None:
            os.chown(workspace, host_uid, host_uid)
        return {"host_uid": host_uid}

    async def _execute(self, handle: SandboxHandle, execution: Execution) -> ExecResult:
        fds = MemFds()
        try:
            argv, popen, info = self.command(handle, execution, fds)
            started, exited = self._track(handle.id)
            try:
                run = await run_capped(
                    argv,
                    env=self._env(execution.env),
                    cwd="/",
                    stdin=execution.stdin,
                    timeout=execution.timeout,
                    output_limit=execution.output_limit,
                    pass_fds=fds.fds,
                    on_start=started,
                    on_exit=exited,
                    **popen,
                )
            except OSError as exc:
                raise SandboxError(f"cannot start bubblewrap: {exc}") from exc
            if not run.timed_out and run.returncode != 0 and not os.pread(info, 1, 0):
                # bwrap stopped before starting the command: a setup failure, not the
                # command's exit status
                raise SandboxError(f"bubblewrap could not set up the sandbox: {run.stderr.text()}")
        finally:
            fds.close()
        return run.result(limits=True)

    def command(
        self, handle: SandboxHandle, execution: Execution, fds: MemFds
    ) -> tuple[list[str], dict[str, Any], int]:
        """What runs ``execution``: the argv, the ``run_capped`` options it needs and
        bwrap's info descriptor (written once the command has started).

        The descriptors it passes (options, synthesised ``/etc`` files) are added to
        ``fds``, which the caller passes to the process and closes.
        """
        if not self._bwrap:
            raise SandboxError("bubblewrap is not installed (apt-get install bubblewrap)")
        spec = handle.spec
        cpu = math.ceil(execution.timeout * spec.vcpus) + 1
        memory = spec.memory_mb * MIB
        options = list(self._sandbox_args(handle, fds))
        info = fds.add("bwrap-info", b"")
        options += ["--info-fd", str(info)]
        args_fd = fds.args_fd(options)
        argv = [
            self._bwrap,
            "--args",
            str(args_fd),
            "--",
            PRLIMIT,
            f"--nproc={spec.max_processes}",
            f"--data={memory}",
            f"--cpu={cpu}:{cpu + 1}",
            "--core=0",
            "--",
            execution.command,
            *execution.args,
        ]
        host_uid = handle.extra.get("host_uid")
        uid = host_uid if isinstance(host_uid, int) else None
        popen: dict[str, Any] = {}
        if self._setpriv:  # the uid and the parent-death signal after exec: vfork
            argv = [*exec_as(uid), *argv]
            popen["dies_with_parent"] = True
        elif uid is not None:
            popen = {"user": uid, "group": uid, "extra_groups": []}
        return argv, popen, info

    # -- argument building ----------------------------------------------------

    @staticmethod
    def _namespace_args(*, network: bool) -> list[str]:
        args = ["--unshare-all"]
        if network:
            args.append("--share-net")
        return [
            *args,
            "--unshare-user",
            "--disable-userns",
            "--uid",
            str(SANDBOX_UID),
            "--gid",
            str(SANDBOX_UID),
            "--die-with-parent",
            "--new-session",
            "--hostname",
            HOSTNAME,
        ]

    def _sandbox_args(self, handle: SandboxHandle, fds: MemFds) -> Iterator[str]:
        spec = handle.spec
        tmp_size = str(spec.memory_mb * MIB)
        yield from self._namespace_args(network=spec.network)
        yield from system_args()
        yield from ("--proc", "/proc", "--dev", "/dev")
        yield from ("--size", tmp_size, "--tmpfs", "/dev/shm")
        yield from ("--size", tmp_size, "--tmpfs", "/tmp")
        yield from ("--dir", "/var", "--symlink", "../tmp", "/var/tmp")
        yield from etc_args(
            fds, uid=SANDBOX_UID, user="sandbox", home="/workspace", network=spec.network
        )
        for given in spec.ro_paths:
            yield from ("--ro-bind", str(given), str(given))
        yield from ("--bind", str(handle.workspace), "/workspace", "--chdir", "/workspace")
        yield from ("--remount-ro", "/")

    @staticmethod
    def _env(extra: dict[str, str] | None) -> dict[str, str]:
        return base_env(extra, home="/workspace", USER="sandbox", LOGNAME="sandbox", TMPDIR="/tmp")

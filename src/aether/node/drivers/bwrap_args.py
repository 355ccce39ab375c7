"""Bubblewrap pieces shared by the ``bwrap`` driver's instances and sandboxes.

Both build a root from nothing: the system read-only (``system_args``), a
synthesised ``/etc`` that tells the sandbox nothing of the node's users
(``etc_files`` and the host files in ``ETC_ALWAYS``/``ETC_NETWORK``), and
arguments and files handed over by descriptor (``MemFds``). Both run
commands as a stable unprivileged host uid derived from a name
(``host_uid_for``), so rlimits count per sandbox or per instance.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os

from aether.node.drivers.spawn import SETPRIV

__all__ = [
    "ETC_ALWAYS",
    "ETC_NETWORK",
    "HOSTNAME",
    "HOST_UID_BASE",
    "PRLIMIT",
    "SETPRIV",
    "MemFds",
    "etc_args",
    "etc_files",
    "host_uid_for",
    "system_args",
]

PRLIMIT = "/usr/bin/prlimit"
HOSTNAME = "sandbox"
HOST_UID_BASE = 1_900_000_000  # the first uid of the range
_HOST_UID_SPAN = 200_000_000

# host files shown read-only in every sandbox: no secrets, needed by common tools
ETC_ALWAYS = (
    "/etc/alternatives",  # Debian's awk, editor, ... are symlinks through here
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/services",
    "/etc/protocols",
)
# and with network: name resolution and TLS roots
ETC_NETWORK = (
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/host.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/pki",
)


def host_uid_for(name: str, *, seed: str = "") -> int:
    """A stable unprivileged host uid per name; ``seed`` keeps the users of two kinds apart."""
    key = f"{seed}:{name}" if seed else name
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return HOST_UID_BASE + digest % _HOST_UID_SPAN


@functools.cache
def system_args() -> tuple[str, ...]:
    """``/usr`` read-only, plus ``/bin``, ``/lib*``, ``/sbin`` as this host has them."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = f"/{name}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return tuple(args)


class MemFds:
    """In-memory files handed to bwrap by descriptor (args, synthesised /etc files)."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def add(self, name: str, data: bytes) -> int:
        fd = os.memfd_create(name)
        self.fds.append(fd)
        if data:
            os.write(fd, data)
            os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def args_fd(self, args: list[str]) -> int:
        """A descriptor for ``bwrap --args``: the command line stays out of ``/proc/*/cmdline``."""
        return self.add("bwrap-args", b"".join(a.encode() + b"\0" for a in args))

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def etc_files(*, uid: int, user: str, home: str, network: bool) -> dict[str, str]:
    """Synthesised /etc files: the sandbox learns nothing of the node's users."""
    return {
        "passwd": f"root:x:0:0:root:/root:/bin/sh\n{user}:x:{uid}:{uid}:{user}:{home}:/bin/sh\n",
        "group": f"root:x:0:\n{user}:x:{uid}:\n",
        "hosts": f"127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "hostname": f"{HOSTNAME}\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\n"
        f"hosts: files{' dns' if network else ''}\nnetworks: files\nprotocols: files\n"
        "services: files\n",
    }


def etc_args(fds: MemFds, *, uid: int, user: str, home: str, network: bool) -> list[str]:
    """The bwrap arguments that build ``/etc``: synthesised files, then safe host files."""
    args: list[str] = []
    for name, data in etc_files(uid=uid, user=user, home=home, network=network).items():
        fd = str(fds.add(name, data.encode()))
        args += ["--perms", "0644", "--ro-bind-data", fd, f"/etc/{name}"]
    for etc in ETC_ALWAYS + (ETC_NETWORK if network else ()):
        args += ["--ro-bind-try", etc, etc]
    return args

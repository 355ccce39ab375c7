"""A real etcd cluster of local members on loopback ports: `aether up --ha`, tests, benchmarks.

Uses Debian's ``etcd-server`` (``/usr/bin/etcd``). Data lives on tmpfs when
available so each raft write's fsync is cheap; ``stop``/``start`` of one member
let chaos tests kill a member and bring it back with its data.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

__all__ = ["EtcdCluster", "etcd_binary", "free_port"]

INSTALL_HINT = "install with: apt-get install -y etcd-server etcd-client"


def etcd_binary() -> str:
    """The etcd server binary; raises RuntimeError with the install hint if missing."""
    path = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
    if path is None:
        raise RuntimeError(f"etcd not found; {INSTALL_HINT}")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class _Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class EtcdCluster:
    """``size`` etcd members; start with :meth:`start`, end with :meth:`stop`."""

    size: int = 3
    heartbeat_ms: int = 50
    election_ms: int = 500
    members: list[_Member] = field(default_factory=list)
    # where the members keep their data; None: a new directory on tmpfs, deleted by stop()
    root: Path | None = None
    # fixed ports (client base+2i, peer base+2i+1), so a kept data dir restarts; None: free ones
    base_port: int | None = None
    _root: Path | None = None
    _owned: bool = False

    def __post_init__(self) -> None:
        if self.root is None:
            base = (
                "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            )
            self._root = Path(tempfile.mkdtemp(prefix="aether-etcd-", dir=base))
            self._owned = True
        else:
            self._root = self.root
            self._root.mkdir(parents=True, exist_ok=True)
        token = "aether-" + self._root.name
        for i in range(self.size):
            self.members.append(
                _Member(
                    name=f"m{i}",
                    client_port=free_port() if self.base_port is None else self.base_port + 2 * i,
                    peer_port=free_port() if self.base_port is None else self.base_port + 2 * i + 1,
                    data_dir=self._root / f"m{i}",
                    log_path=self._root / f"m{i}.log",
                )
            )
        self._initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        self._token = token

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def url(self) -> str:
        """An ``etcd://`` state store URL naming every member."""
        return "etcd://" + ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)

    def start(self, timeout: float = 20.0) -> EtcdCluster:
        binary = etcd_binary()
        for member in self.members:
            self._spawn(binary, member)
        self.wait_healthy(timeout)
        return self

    def _spawn(self, binary: str, member: _Member) -> None:
        state = "existing" if member.data_dir.exists() else "new"
        args = [
            binary,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url,
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", self._initial_cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", self._token,
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip
        log = member.log_path.open("ab")
        try:
            member.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()

    def wait_healthy(self, timeout: float = 20.0, members: list[_Member] | None = None) -> None:
        """Block until every (running) member reports health with a leader."""
        deadline = time.monotonic() + timeout
        pending = [m for m in (members or self.members) if m.process is not None]
        while pending:
            member = pending[0]
            if member.process is not None and member.process.poll() is not None:
                raise RuntimeError(
                    f"etcd member {member.name} exited with {member.process.returncode}:\n"
                    + member.log_path.read_text(errors="replace")[-4000:]
                )
            try:
                r = httpx.get(f"{member.client_url}/health", timeout=1.0)
                if r.status_code == 200 and r.json().get("health") == "true":
                    pending.pop(0)
                    continue
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd member {member.name} not healthy after {timeout}s")
            time.sleep(0.05)

    def kill(self, index: int) -> None:
        """``kill -9`` one member (its data stays for :meth:`restart`)."""
        member = self.members[index]
        if member.process is not None and member.process.poll() is None:
            member.process.send_signal(signal.SIGKILL)
            member.process.wait()
        member.process = None

    def restart(self, index: int, timeout: float = 20.0, *, wait: bool = True) -> None:
        """Start a killed member again on its old data (``wait``: until it is healthy)."""
        member = self.members[index]
        self._spawn(etcd_binary(), member)
        if wait:
            self.wait_healthy(timeout, [member])

    def leader(self) -> int:
        """The index of the current raft leader (asks the running members)."""
        for member in self.members:
            if member.process is None:
                continue
            try:
                r = httpx.post(f"{member.client_url}/v3/maintenance/status", json={}, timeout=2)
                status = r.json()
            except (httpx.HTTPError, ValueError):
                continue
            leader = status.get("leader")
            for i, m in enumerate(self.members):
                if m.process is None:
                    continue
                r = httpx.post(f"{m.client_url}/v3/maintenance/status", json={}, timeout=2)
                if r.json().get("header", {}).get("member_id") == leader:
                    return i
        raise RuntimeError("no etcd leader found")

    def stop(self) -> None:
        """Kill every member; a temporary data directory (no ``root`` given) is deleted too."""
        for index in range(len(self.members)):
            self.kill(index)
        if self._root is not None and self._owned:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

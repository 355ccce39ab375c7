"""`aether up --ha` as an operator meets it: supervision, failover, backup and restore."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_up import _free_run

pytestmark = pytest.mark.e2e


class Up:
    """A real `aether up --ha` in its own session; its output read line by line."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.api, self.router, self.etcd = _free_run(3), _free_run(2), _free_run(6)
        self.data = tmp_path / "up"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AETHER_")},
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
        }
        flags = ["--data-dir", str(self.data), "--port", str(self.api)]
        flags += ["--router-port", str(self.router), "--etcd-port", str(self.etcd), *extra]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aether", "up", "--ha", *flags],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        for line in self.seen:
            if m := re.search(pattern, line):
                return m
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.seen))

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.api + i}"

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aether", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def status(self, i: int) -> dict[str, object]:
        token = (self.data / "server" / "admin.token").read_text().strip()
        response = httpx.get(
            f"{self.url(i)}/api/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        response.raise_for_status()
        data: dict[str, object] = response.json()
        return data

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(30)


def _zombies(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def test_killed_processes_come_back_and_a_backup_restores_into_a_new_ha_cluster(
    tmp_path: Path,
) -> None:
    up = Up(tmp_path, "--demo")
    try:
        up.wait_line(r"^Next:", 120)
        up.wait_line(r"state:\s+etcd://\S+/aether$", 1)
        pids = {
            m: int(p)
            for m, p in re.findall(r"^\s+(\S+ \S+) \(pid (\d+)\): ", "\n".join(up.seen), re.M)
        }
        assert {"etcd m0", "etcd m1", "etcd m2", "server 1", "server 2", "server 3"} <= set(pids)
        layout = json.loads((up.data / "up.json").read_text())
        assert layout["state_url"].endswith("/aether") and len(layout["processes"]) == 8
        leader = str(up.status(0)["leader"])
        dead = [up.url(i) for i in range(3)].index(leader)
        survivor = (dead + 1) % 3

        killed = time.monotonic()
        os.kill(pids[f"server {dead + 1}"], signal.SIGKILL)
        os.kill(pids["etcd m1"], signal.SIGKILL)
        up.wait_line(rf"^server {dead + 1} exited \(signal 9\); restarting in 1\.0 s", 10)
        up.wait_line(r"^etcd m1 exited \(signal 9\); restarting in 1\.0 s", 10)
        # the status stops naming the dead leader once its lease (3 s) is gone
        while (now := up.status(survivor)["leader"]) in (leader, None):
            assert time.monotonic() - killed < 10, now
            time.sleep(0.2)
        logs = "".join(p.read_text() for p in up.data.glob("server*.log"))
        assert f"leader elected: {now} " in logs and f"took over from {leader}" in logs
        up.wait_line(rf"^server {dead + 1} restarted \(pid \d+\)", 10)
        up.wait_line(r"^etcd m1 restarted \(pid \d+\)", 10)
        deadline = time.monotonic() + 30
        while True:  # the restarted server answers, the restarted member is healthy
            try:
                back = up.status(dead)
                health = httpx.get(f"http://127.0.0.1:{up.etcd + 2}/health", timeout=2).json()
                if back["leader"] and health["health"] == "true":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert time.monotonic() < deadline, "the restarted server or member never answered"
            time.sleep(0.3)
        assert _zombies(up.proc.pid) == []
        answer = httpx.get(f"http://127.0.0.1:{up.router}/apps/hello-python/", timeout=5)
        assert answer.status_code == 200

        archive = tmp_path / "backup.tar.gz"
        made = up.cli("backup", "create", "--data-dir", str(up.data), "--out", str(archive))
        assert made.returncode == 0, made.stderr
        assert "state: etcd" in made.stdout
    finally:
        assert up.stop() == 0
    # the cluster would not read a restore into its data dir: refused, nothing written
    refused = up.cli("backup", "restore", str(archive), "--data-dir", str(up.data), "--force")
    assert refused.returncode != 0 and "aether up --ha" in refused.stderr, refused.stderr

    shutil.rmtree(up.data)
    again = Up(tmp_path, "--restore", str(archive))
    try:
        again.wait_line(r"^restored .* into ", 60)
        again.wait_line(r"^Next:", 120)
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{again.router}/apps/hello-python/", timeout=5)
                if answer.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the restored app never served"
            time.sleep(0.5)
        assert answer.json()["message"] == "Hello from Aether"
        history = again.cli("deployments", "hello-python", "--format", "json")
        assert history.returncode == 0, history.stderr
        assert [d["version"] for d in json.loads(history.stdout)["deployments"]] == [1]
    finally:
        assert again.stop() == 0


def test_up_ha_refuses_a_data_dir_whose_state_it_would_not_read(tmp_path: Path) -> None:
    """A restore into a plain data dir writes state.db; `up --ha` would start empty beside it."""
    server = tmp_path / "up" / "server"
    server.mkdir(parents=True)
    (server / "state.db").write_bytes(b"")
    up = Up(tmp_path)
    try:
        assert up.proc.wait(30) != 0
        up.wait_line(r"does not read .* --restore ARCHIVE", 5)
    finally:
        up.stop()
    assert not (tmp_path / "up" / "etcd").exists()

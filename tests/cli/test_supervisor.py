"""`aether up`'s supervisor on real processes: reaps, reports, restarts with backoff."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time

from aether.cli.supervisor import Child, Supervisor
from aether.core.restarts import Backoff
from aether.server.leader.reconcile import failover_line


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"])


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_a_killed_child_is_reaped_reported_and_restarted_after_its_delay() -> None:
    out = io.StringIO()
    supervisor = Supervisor(policy=Backoff(initial=0.3, cap=1.0, healthy_after=60), out=out)
    child = Child("server 2", _sleeper, "sleep 60", "/dev/null", _sleeper())
    supervisor.add(child)
    first = child.proc
    try:
        os.kill(first.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while child.proc is first and time.monotonic() < deadline:
            supervisor.tick()
            if child.due is not None:
                assert _state(first.pid) == "gone"  # waited on: no zombie left
            time.sleep(0.05)
        assert child.proc is not first and child.proc.poll() is None
        lines = out.getvalue().splitlines()
        assert lines[0].startswith("server 2 exited (signal 9); restarting in 0.3 s")
        assert lines[1] == f"server 2 restarted (pid {child.proc.pid})"
        # a second quick death waits twice as long
        os.kill(child.proc.pid, signal.SIGKILL)
        child.proc.wait()
        supervisor.tick()
        assert "restarting in 0.6 s" in out.getvalue().splitlines()[2]
    finally:
        for proc in (first, child.proc):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_child_that_cannot_start_is_retried_with_backoff() -> None:
    out = io.StringIO()

    def broken() -> subprocess.Popen[bytes]:
        raise OSError("no such binary")

    exited = subprocess.Popen(["true"])
    exited.wait()
    supervisor = Supervisor(policy=Backoff(initial=0.01, cap=0.05), out=out)
    supervisor.add(Child("etcd m1", broken, "etcd …", "/dev/null", exited))
    for _ in range(4):
        supervisor.tick()
        time.sleep(0.06)
    text = out.getvalue()
    assert "etcd m1 exited (code 0)" in text
    assert "etcd m1 did not start (no such binary); retrying in" in text


def test_the_failover_line_names_who_was_elected_and_after_whom() -> None:
    assert failover_line("http://b", 42, "http://a") == (
        "leader elected: http://b (epoch 42); took over from http://a"
    )
    assert failover_line("http://a", 7, None).endswith("no leader before")
    assert failover_line("http://a", 9, "http://a").endswith("re-elected")

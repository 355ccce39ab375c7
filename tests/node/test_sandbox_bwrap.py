"""The bwrap sandbox driver with real bubblewrap: workspace, limits, isolation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aether.errors import NotFoundError
from aether.node.drivers import sandbox_drivers
from aether.node.drivers.base import MIB, SandboxHandle, SandboxSpec
from aether.node.drivers.bwrap import BwrapDriver
from aether.node.drivers.bwrap_sandboxes import SANDBOX_UID
from aether.node.drivers.process import ProcessDriver

PY = "/usr/bin/python3"  # the system python, visible inside through /usr


@pytest.fixture(scope="module")
def driver() -> BwrapDriver:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is needed: apt-get install bubblewrap")
    driver = BwrapDriver()
    assert driver.available(), "bubblewrap is installed but cannot create namespaces here"
    return driver


@pytest.fixture
def node_dir() -> Iterator[Path]:
    """A node data directory as a real node has it: reachable by other uids.

    pytest's own tmp directories are private to root (0700), which would put a
    root node's sandboxes in the fallback mode (tested on its own below).
    """
    path = Path(tempfile.mkdtemp(prefix="aether-sbx-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def box(driver: BwrapDriver, node_dir: Path) -> AsyncIterator[SandboxHandle]:
    handle = await driver.create(SandboxSpec(id="box1", name="box", root=node_dir / "box1"))
    yield handle
    await driver.delete(handle)


async def run(
    driver: BwrapDriver, box: SandboxHandle, script: str, timeout: float = 20
) -> tuple[int, str, str]:
    result = await driver.execute(box, "sh", ["-c", script], timeout=timeout)
    return result.exit_code, result.stdout, result.stderr


def test_reported_as_available_and_isolated(driver: BwrapDriver) -> None:
    drivers = sandbox_drivers()
    assert drivers["bwrap"].isolated is True
    assert drivers["process"].isolated is False


async def test_workspace_persists_across_executions(
    driver: BwrapDriver, box: SandboxHandle
) -> None:
    code, out, _ = await run(driver, box, 'echo kept > note.txt; pwd; echo "$HOME"; id -u')
    assert code == 0
    assert out.split() == ["/workspace", "/workspace", str(SANDBOX_UID)]
    code, out, _ = await run(driver, box, "cat /workspace/note.txt")
    assert (code, out) == (0, "kept\n")
    assert (box.workspace / "note.txt").read_text() == "kept\n"


async def test_nothing_but_the_workspace_persists(driver: BwrapDriver, box: SandboxHandle) -> None:
    await run(driver, box, "echo x > /tmp/scratch")
    code, _, err = await run(driver, box, "cat /tmp/scratch")
    assert code != 0 and "No such file" in err


async def test_delete_removes_the_sandbox(driver: BwrapDriver, node_dir: Path) -> None:
    handle = await driver.create(SandboxSpec(id="gone", name="gone", root=node_dir / "gone"))
    await driver.execute(handle, "touch", ["f"], timeout=10)
    await driver.delete(handle)
    assert not (node_dir / "gone").exists()
    assert driver.load("gone", node_dir / "gone") is None
    with pytest.raises(NotFoundError):
        await driver.execute(handle, "true", [], timeout=10)
    await driver.delete(handle)  # deleting twice is harmless


async def test_delete_stops_running_executions(driver: BwrapDriver, node_dir: Path) -> None:
    handle = await driver.create(SandboxSpec(id="busy", name="busy", root=node_dir / "busy"))
    running = asyncio.ensure_future(driver.execute(handle, "sleep", ["30"], timeout=60))
    await asyncio.sleep(0.3)
    await driver.delete(handle)
    result = await asyncio.wait_for(running, 5)
    assert result.exit_code != 0


async def test_reattach_after_restart(driver: BwrapDriver, node_dir: Path) -> None:
    spec = SandboxSpec(id="again", name="again", root=node_dir / "again", memory_mb=128)
    first = await driver.create(spec)
    await driver.execute(first, "sh", ["-c", "echo before > state"], timeout=10)
    restarted = BwrapDriver()  # a new node process
    handle = restarted.load("again", node_dir / "again")
    assert handle is not None
    assert handle.spec == spec and handle.extra == first.extra
    result = await restarted.execute(handle, "cat", ["state"], timeout=10)
    assert result.stdout == "before\n"
    assert restarted.load("other", node_dir / "again") is None
    assert ProcessDriver().load("again", node_dir / "again") is None
    assert await driver.create(spec) == first  # a retried create is the same sandbox
    await restarted.delete(handle)


async def test_cannot_read_node_files(
    driver: BwrapDriver, box: SandboxHandle, node_dir: Path, tmp_path: Path
) -> None:
    host_secret = tmp_path / "host-secret"
    node_secret = node_dir / "node-secret"
    for secret in (host_secret, node_secret):
        secret.write_text("s3cr3t")
        secret.chmod(0o644)
    other = await driver.create(SandboxSpec(id="other", name="o", root=node_dir / "other"))
    (other.workspace / "theirs").write_text("s3cr3t")
    for path in (host_secret, node_secret, other.workspace / "theirs", Path("/etc/shadow")):
        code, out, err = await run(driver, box, f"cat {path}")
        assert code != 0, path
        assert "s3cr3t" not in out
    code, out, _ = await run(driver, box, "ls /")
    assert code == 0
    top = set(out.split())
    assert {"usr", "workspace", "tmp", "proc", "dev", "etc"} <= top
    assert not top & {"root", "home", "work", "srv", "opt", "mnt", "boot", "var/lib"}
    code, out, _ = await run(driver, box, "cut -d: -f1 /etc/passwd")
    assert out.split() == ["root", "sandbox"]  # not the node's users
    code, _, err = await run(driver, box, "touch /usr/x || touch /x || touch /etc/x && echo wrote")
    assert code != 0 and "Read-only file system" in err
    await driver.delete(other)


async def test_only_given_paths_are_shown_read_only(driver: BwrapDriver, node_dir: Path) -> None:
    shared = node_dir / "shared"
    shared.mkdir(mode=0o755)
    (shared / "data.txt").write_text("given")
    (shared / "data.txt").chmod(0o644)
    handle = await driver.create(
        SandboxSpec(id="ro", name="ro", root=node_dir / "ro", ro_paths=(shared,))
    )
    result = await driver.execute(
        handle, "sh", ["-c", f"cat {shared}/data.txt; echo x > {shared}/new"], timeout=10
    )
    assert result.stdout == "given"
    assert "Read-only file system" in result.stderr
    assert not (shared / "new").exists()
    await driver.delete(handle)


async def test_cannot_see_host_processes(driver: BwrapDriver, box: SandboxHandle) -> None:
    marker = f"aether-host-marker-{uuid.uuid4().hex}"
    host = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(60)", marker)
    try:
        code, out, _ = await run(
            driver,
            box,
            "for p in /proc/[0-9]*; do echo \"${p#/proc/} $(tr '\\0' ' ' < $p/cmdline)\"; done",
        )
    finally:
        host.kill()
        await host.wait()
    assert code == 0
    assert marker not in out
    pids = {int(line.split()[0]) for line in out.splitlines()}
    assert host.pid not in pids or host.pid < 10
    assert os.getpid() not in pids or os.getpid() < 10
    first = dict(line.split(" ", 1) for line in out.splitlines())["1"]
    assert "bwrap" in first  # pid 1 is the sandbox's own init, not the host's
    assert len(pids) < 10


async def test_network_is_off_unless_asked_for(
    driver: BwrapDriver, box: SandboxHandle, node_dir: Path
) -> None:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello-from-host")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = (
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=5)\n"
        "print(s.recv(100).decode())\n"
    )
    networked = await driver.create(
        SandboxSpec(id="net", name="net", root=node_dir / "net", network=True)
    )
    try:
        off = await driver.execute(box, PY, ["-c", client], timeout=20)
        on = await driver.execute(networked, PY, ["-c", client], timeout=20)
        links = await driver.execute(box, "cat", ["/proc/net/dev"], timeout=10)
    finally:
        server.close()
        await driver.delete(networked)
    assert off.exit_code != 0
    assert "hello-from-host" not in off.stdout
    assert "ConnectionRefused" in off.stderr or "unreachable" in off.stderr.lower()
    assert on.exit_code == 0, on.stderr
    assert on.stdout.strip() == "hello-from-host"
    interfaces = {line.split(":")[0].strip() for line in links.stdout.splitlines()[2:]}
    assert interfaces == {"lo"}


async def test_stopped_at_memory_limit(driver: BwrapDriver, node_dir: Path) -> None:
    handle = await driver.create(
        SandboxSpec(id="small", name="small", root=node_dir / "small", memory_mb=64)
    )
    fits = await driver.execute(handle, PY, ["-c", "b = bytearray(16 * 2**20)"], timeout=20)
    assert fits.exit_code == 0, fits.stderr
    assert fits.killed_reason is None
    big = await driver.execute(handle, PY, ["-c", "b = bytearray(256 * 2**20)"], timeout=20)
    assert big.exit_code != 0
    assert big.killed_reason == "memory limit"
    # a shell growing a string without bound stops there too
    shell = await driver.execute(
        handle, "sh", ["-c", 'x=x; while :; do x="$x$x"; done'], timeout=20
    )
    assert shell.exit_code != 0 and not shell.timed_out
    # tmpfs mounts are capped as well, so /tmp is no way around the limit
    tmp = await driver.execute(
        handle, "sh", ["-c", "head -c 200000000 /dev/zero > /tmp/fill"], timeout=20
    )
    assert tmp.exit_code != 0 and "No space left" in tmp.stderr
    await driver.delete(handle)


async def test_stopped_at_time_limit_with_everything_it_started(
    driver: BwrapDriver, box: SandboxHandle
) -> None:
    marker = f"31.{uuid.uuid4().int % 10**6:06d}"
    began = time.monotonic()
    result = await driver.execute(box, "sh", ["-c", f"sleep {marker} & sleep 30"], timeout=1)
    elapsed = time.monotonic() - began
    assert result.timed_out is True
    assert result.killed_reason == "timeout"
    assert result.exit_code != 0
    assert elapsed < 5  # killed at the timeout, not after the 30 s sleep
    await asyncio.sleep(0.2)
    leftovers = [p for p in Path("/proc").glob("[0-9]*") if marker in _cmdline(p)]
    assert leftovers == []


async def test_cpu_time_limit(driver: BwrapDriver, box: SandboxHandle) -> None:
    result = await driver.execute(box, "sh", ["-c", "ulimit -t"], timeout=3)
    assert result.stdout.strip() == "4"  # ceil(timeout * vcpus) + 1
    killed = await driver.execute(box, "sh", ["-c", "kill -XCPU $$"], timeout=3)
    assert killed.exit_code == 128 + 24
    assert killed.killed_reason == "cpu time limit"


async def test_stopped_at_process_limit(driver: BwrapDriver, node_dir: Path) -> None:
    handle = await driver.create(
        SandboxSpec(id="few", name="few", root=node_dir / "few", max_processes=8)
    )
    assert handle.extra["host_uid"] is not None or os.geteuid() != 0
    result = await driver.execute(
        handle, "sh", ["-c", "for i in $(seq 30); do sleep 2 & done; wait"], timeout=20
    )
    assert result.exit_code != 0
    assert result.killed_reason == "process limit"
    ok = await driver.execute(handle, "sh", ["-c", "sleep 0.1 & sleep 0.1 & wait"], timeout=20)
    assert ok.exit_code == 0
    await driver.delete(handle)


def _cmdline(proc: Path) -> str:
    with contextlib.suppress(OSError):
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_huge_output_is_capped_without_exhausting_memory(
    driver: BwrapDriver, box: SandboxHandle
) -> None:
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS counter
    before = _peak_rss_kib()
    result = await driver.execute(
        box,
        "sh",
        ["-c", "head -c 200000000 /dev/zero; head -c 3000000 /dev/zero >&2"],
        timeout=60,
        output_limit=MIB,
    )
    grown_mib = (_peak_rss_kib() - before) / 1024
    assert result.exit_code == 0
    assert result.stdout_truncated and result.stderr_truncated
    assert result.stdout.endswith(f"\n[... truncated {200_000_000 - MIB} bytes]")
    assert MIB <= len(result.stdout) < MIB + 100
    assert result.stderr.endswith(f"\n[... truncated {3_000_000 - MIB} bytes]")
    assert grown_mib < 50, f"peak RSS grew by {grown_mib:.0f} MiB"


async def test_small_output_is_untouched(driver: BwrapDriver, box: SandboxHandle) -> None:
    result = await driver.execute(box, "printf", ["%s", "12345"], timeout=10, output_limit=5)
    assert (result.stdout, result.stdout_truncated) == ("12345", False)
    result = await driver.execute(box, "printf", ["%s", "123456"], timeout=10, output_limit=5)
    assert result.stdout == "12345\n[... truncated 1 bytes]"
    assert result.stdout_truncated


async def test_stdin(driver: BwrapDriver, box: SandboxHandle) -> None:
    result = await driver.execute(box, "cat", [], timeout=10, stdin=b"line one\nline two\n")
    assert result.stdout == "line one\nline two\n"
    big = b"x" * 5_000_000
    result = await driver.execute(box, "wc", ["-c"], timeout=20, stdin=big)
    assert result.stdout.strip() == "5000000"
    result = await driver.execute(box, "cat", [], timeout=10)  # no stdin: EOF at once
    assert (result.exit_code, result.stdout) == (0, "")


async def test_env(driver: BwrapDriver, box: SandboxHandle) -> None:
    os.environ["AETHER_HOST_ONLY"] = "leak"
    try:
        result = await driver.execute(box, "env", [], timeout=10, env={"GREETING": "hi there"})
    finally:
        del os.environ["AETHER_HOST_ONLY"]
    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert env["GREETING"] == "hi there"
    assert env["HOME"] == "/workspace"
    assert "AETHER_HOST_ONLY" not in env


async def test_args_are_passed_verbatim(driver: BwrapDriver, box: SandboxHandle) -> None:
    args = ["two words", "'single'", '"double"', "$HOME", "*", "", "a\nb", "--", "ünï"]
    result = await driver.execute(
        box, PY, ["-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *args], timeout=10
    )
    assert json.loads(result.stdout) == args


async def test_missing_command(driver: BwrapDriver, box: SandboxHandle) -> None:
    result = await driver.execute(box, "no-such-command", [], timeout=10)
    assert result.exit_code == 127
    assert "no-such-command" in result.stderr


async def test_private_node_dir_falls_back_but_stays_isolated(
    driver: BwrapDriver, tmp_path: Path
) -> None:
    """A root node whose data dir is private to root still isolates, minus NPROC."""
    private = tmp_path / "node"
    private.mkdir(mode=0o700)
    (private / "node-secret").write_text("s3cr3t")
    handle = await driver.create(SandboxSpec(id="priv", name="p", root=private / "priv"))
    if os.geteuid() == 0 and not os.stat(tmp_path).st_mode & 0o001:
        assert handle.extra["host_uid"] is None
    result = await driver.execute(
        handle, "sh", ["-c", f"echo ok > f; cat f; cat {private}/node-secret"], timeout=10
    )
    assert result.stdout == "ok\n"
    assert result.exit_code != 0 and "s3cr3t" not in result.stdout
    await driver.delete(handle)
    assert not (private / "priv").exists()

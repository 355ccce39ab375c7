"""What an execution in an existing bwrap sandbox keeps and skips, with real processes.

The driver keeps the handles it has loaded and starts ``bwrap`` through ``setpriv``
(no ``preexec_fn``, so ``vfork``); these prove neither changes what a sandbox is:
handles follow the state on disk, whoever changes it, and the process still runs
as the sandbox's uid with nothing of root's and dies with the node.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether.node.drivers import workspace
from aether.node.drivers.base import SandboxSpec
from aether.node.drivers.bwrap import BwrapDriver
from aether.node.drivers.process import ProcessDriver
from aether.tasks.handlers import PermanentTaskError, TaskContext, handler_for
from aether.tasks.types import VmExecutePayload


@pytest.fixture
def node_dir() -> Iterator[Path]:
    """Reachable by other uids, as a node's data directory is (see test_sandbox_bwrap)."""
    path = Path(tempfile.mkdtemp(prefix="aether-sbx-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _driver() -> BwrapDriver:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is needed: apt-get install bubblewrap")
    driver = BwrapDriver()
    assert driver.available(), "bubblewrap is installed but cannot create namespaces here"
    return driver


def _command_lines(token: str) -> dict[int, bytes]:
    """Host processes whose command line mentions ``token``, by pid."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if token.encode() in cmdline:
            found[int(entry)] = cmdline
    return found


def _with_token(token: str) -> list[int]:
    return list(_command_lines(token))


def _running(argv: list[str]) -> bool:
    """Whether a process runs ``argv`` (not merely mentions it, as its parents do)."""
    exact = b"".join(a.encode() + b"\0" for a in argv)
    return exact in _command_lines(argv[-1]).values()


async def _wait_for(check: object, seconds: float = 10) -> None:
    assert callable(check)
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


async def test_a_sandbox_made_by_another_driver_instance_is_found(node_dir: Path) -> None:
    mine, other = _driver(), _driver()
    root = node_dir / "shared"
    assert mine.load("shared", root) is None
    made = await other.create(SandboxSpec(id="shared", name="s", root=root, memory_mb=128))
    found = mine.load("shared", root)
    assert found is not None and found.spec == made.spec
    result = await mine.execute(found, "echo", ["hi"], timeout=10)
    assert result.stdout == "hi\n"
    await other.delete(made)


async def test_a_deleted_sandbox_is_not_found_afterwards(node_dir: Path) -> None:
    mine, other = _driver(), _driver()
    root = node_dir / "gone"
    handle = await mine.create(SandboxSpec(id="gone", name="g", root=root))
    assert mine.load("gone", root) == handle  # read and kept
    await mine.delete(handle)
    assert mine.load("gone", root) is None

    handle = await mine.create(SandboxSpec(id="gone", name="g", root=root))
    assert mine.load("gone", root) == handle
    await other.delete(handle)  # by another instance: this one is not told
    assert mine.load("gone", root) is None


async def test_a_sandbox_made_again_is_read_again(node_dir: Path) -> None:
    mine, other = _driver(), _driver()
    root = node_dir / "again"
    first = await mine.create(SandboxSpec(id="again", name="a", root=root, memory_mb=128))
    assert mine.load("again", root) == first
    await other.delete(first)
    second = await other.create(SandboxSpec(id="again", name="b", root=root, memory_mb=256))
    found = mine.load("again", root)
    assert found is not None and found.spec == second.spec and found.spec.memory_mb == 256
    # kept for its id and driver only: another id or driver on that root finds nothing
    assert mine.load("other", root) is None
    assert ProcessDriver().load("again", root) is None
    await mine.delete(second)


async def test_a_sandbox_whose_workspace_vanished_is_not_found(node_dir: Path) -> None:
    driver = _driver()
    root = node_dir / "ws"
    handle = await driver.create(SandboxSpec(id="ws", name="w", root=root))
    assert driver.load("ws", root) == handle
    shutil.rmtree(handle.workspace)
    assert driver.load("ws", root) is None
    await driver.delete(handle)


async def test_kept_handles_are_bounded_and_the_dropped_read_again(
    node_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workspace, "_KEEP", 2)
    driver, maker = _driver(), _driver()
    made = [
        await maker.create(SandboxSpec(id=f"k{i}", name="k", root=node_dir / f"k{i}"))
        for i in range(3)
    ]
    for _ in range(2):
        assert [driver.load(h.id, h.spec.root) for h in made] == made
        assert len(driver._loaded) == 2


async def test_vm_execute_finds_kept_sandboxes_and_refuses_deleted_ones(node_dir: Path) -> None:
    driver = _driver()
    await driver.create(SandboxSpec(id="vm1", name="v", root=node_dir / "vm1"))
    ctx = TaskContext(
        node="n1",
        sandboxes={"bwrap": driver, "process": ProcessDriver()},
        root=node_dir,
        client=None,
        timeout=10,
    )
    execute = handler_for("vm:execute")
    assert execute is not None
    payload = VmExecutePayload(sandbox_id="vm1", command="echo", args=["one"])
    for _ in range(2):  # the second finds the handle kept by the first
        assert (await execute(payload, ctx))["stdout"] == "one\n"
    handle = BwrapDriver().load("vm1", node_dir / "vm1")
    assert handle is not None
    await BwrapDriver().delete(handle)  # deleted by another instance
    with pytest.raises(PermanentTaskError):
        await execute(payload, ctx)


@pytest.mark.skipif(os.geteuid() != 0, reason="a per-sandbox host uid is used on a root node")
async def test_bwrap_runs_as_the_sandbox_uid_with_nothing_of_root(node_dir: Path) -> None:
    driver = _driver()
    handle = await driver.create(SandboxSpec(id="who", name="w", root=node_dir / "who"))
    uid = handle.extra["host_uid"]
    assert isinstance(uid, int)
    token = f"{60 + int(uuid.uuid4().int % 1000) / 1000:.3f}"
    running = asyncio.ensure_future(driver.execute(handle, "sleep", [token], timeout=30))
    try:
        await _wait_for(lambda: _running(["sleep", token]), seconds=60)
        for pid in _with_token(token):
            status = dict(
                line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            )
            # real, effective, saved and filesystem ids: no way back to root
            assert status["Uid"].split() == [str(uid)] * 4
            assert status["Gid"].split() == [str(uid)] * 4
            assert status["Groups"].split() == []
            assert int(status["PPid"]) != 1  # a child of the node (or of bwrap), not reparented
    finally:
        await driver.delete(handle)
    assert (await asyncio.wait_for(running, 10)).exit_code != 0


_NODE = """
import asyncio, sys
from pathlib import Path
from aether.node.drivers import workspace
from aether.node.drivers.base import SandboxSpec
from aether.node.drivers.bwrap import BwrapDriver

async def main() -> None:
    driver = BwrapDriver()
    root = Path(sys.argv[1])
    handle = await driver.create(SandboxSpec(id=root.name, name="n", root=root))
    await driver.execute(handle, "sleep", [sys.argv[2]], timeout=120)

asyncio.run(main())
"""


async def test_an_execution_dies_with_the_node(node_dir: Path) -> None:
    """A killed node leaves no ``bwrap`` and no command behind (PR_SET_PDEATHSIG)."""
    token = f"{90 + int(uuid.uuid4().int % 1000) / 1000:.3f}"
    node = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _NODE, str(node_dir / "orphan"), token
    )
    try:
        await _wait_for(lambda: _running(["sleep", token]), seconds=60)  # the command runs
    finally:
        node.send_signal(signal.SIGKILL)
        await node.wait()
    await _wait_for(lambda: not _with_token(token), seconds=10)

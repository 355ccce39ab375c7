"""The process sandbox driver (the unisolated fallback) and the shared output cap."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from pathlib import Path

import pytest

from aether.errors import BadRequestError, NotFoundError
from aether.node.drivers.base import MIB, SandboxHandle, SandboxSpec
from aether.node.drivers.bwrap import BwrapDriver
from aether.node.drivers.execution import OutputCap
from aether.node.drivers.process import ProcessDriver

PY = "/usr/bin/python3"


@pytest.fixture
def driver() -> ProcessDriver:
    return ProcessDriver()


@pytest.fixture
async def box(driver: ProcessDriver, tmp_path: Path) -> SandboxHandle:
    return await driver.create(SandboxSpec(id="p1", name="p", root=tmp_path / "p1"))


def test_reported_as_not_isolated(driver: ProcessDriver) -> None:
    assert driver.available() is True
    assert driver.isolated is False


async def test_workspace_persists_and_is_home(driver: ProcessDriver, box: SandboxHandle) -> None:
    result = await driver.execute(box, "sh", ["-c", 'echo kept > f; pwd; echo "$HOME"'], timeout=10)
    assert result.stdout.split() == [str(box.workspace)] * 2
    result = await driver.execute(box, "cat", ["f"], timeout=10)
    assert result.stdout == "kept\n"


async def test_delete_and_reattach(driver: ProcessDriver, tmp_path: Path) -> None:
    spec = SandboxSpec(id="p2", name="p", root=tmp_path / "p2", vcpus=2, memory_mb=512)
    handle = await driver.create(spec)
    await driver.execute(handle, "sh", ["-c", "echo 1 > state"], timeout=10)
    again = ProcessDriver().load("p2", tmp_path / "p2")
    assert again is not None and again.spec == spec
    assert (await driver.execute(again, "cat", ["state"], timeout=10)).stdout == "1\n"
    assert BwrapDriver().load("p2", tmp_path / "p2") is None
    await driver.delete(again)
    assert not (tmp_path / "p2").exists()
    assert driver.load("p2", tmp_path / "p2") is None
    with pytest.raises(NotFoundError):
        await driver.execute(handle, "true", [], timeout=10)


async def test_delete_removes_what_the_command_locked(
    driver: ProcessDriver, box: SandboxHandle
) -> None:
    await driver.execute(
        box, "sh", ["-c", "mkdir -p d/e && touch d/e/f && chmod 000 d/e d"], timeout=10
    )
    await driver.delete(box)
    assert not box.spec.root.exists()


async def test_timeout_kills_the_process_group(driver: ProcessDriver, box: SandboxHandle) -> None:
    marker = f"32.{uuid.uuid4().int % 10**6:06d}"
    began = time.monotonic()
    result = await driver.execute(box, "sh", ["-c", f"sleep {marker} & sleep 30"], timeout=1)
    assert time.monotonic() - began < 5
    assert result.timed_out and result.killed_reason == "timeout"
    assert result.exit_code == 128 + 9
    time.sleep(0.2)
    assert not [p for p in Path("/proc").glob("[0-9]*") if marker in _cmdline(p)]


async def test_background_children_do_not_hold_the_execution(
    driver: ProcessDriver, box: SandboxHandle
) -> None:
    began = time.monotonic()
    result = await driver.execute(box, "sh", ["-c", "sleep 30 & echo started"], timeout=20)
    assert time.monotonic() - began < 5
    assert result.stdout == "started\n" and not result.timed_out


async def test_memory_limit(driver: ProcessDriver, tmp_path: Path) -> None:
    handle = await driver.create(SandboxSpec(id="m", name="m", root=tmp_path / "m", memory_mb=64))
    result = await driver.execute(handle, PY, ["-c", "b = bytearray(256 * 2**20)"], timeout=20)
    assert result.exit_code != 0
    assert result.killed_reason == "memory limit"


async def test_output_is_capped(driver: ProcessDriver, box: SandboxHandle) -> None:
    result = await driver.execute(
        box, "head", ["-c", "50000000", "/dev/zero"], timeout=30, output_limit=MIB
    )
    assert result.stdout_truncated
    assert result.stdout.endswith(f"\n[... truncated {50_000_000 - MIB} bytes]")


async def test_stdin_env_args(driver: ProcessDriver, box: SandboxHandle) -> None:
    result = await driver.execute(box, "cat", [], timeout=10, stdin=b"piped")
    assert result.stdout == "piped"
    result = await driver.execute(box, "sh", ["-c", 'echo "$X"'], timeout=10, env={"X": "a b"})
    assert result.stdout == "a b\n"
    args = ["two words", "'q'", '"dq"', "$HOME", "*", ""]
    result = await driver.execute(
        box, PY, ["-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *args], timeout=10
    )
    assert json.loads(result.stdout) == args


async def test_missing_command_and_bad_input(driver: ProcessDriver, box: SandboxHandle) -> None:
    result = await driver.execute(box, "no-such-command", [], timeout=10)
    assert result.exit_code == 127 and "no-such-command" in result.stderr
    with pytest.raises(BadRequestError):
        await driver.execute(box, "echo", ["a\0b"], timeout=10)
    with pytest.raises(BadRequestError):
        await driver.execute(box, "echo", [], timeout=0)
    with pytest.raises(BadRequestError):
        await driver.execute(box, "env", [], timeout=10, env={"A=B": "c"})
    with pytest.raises(BadRequestError):
        SandboxSpec(id="../escape", name="x", root=Path("/tmp/x"))


def test_output_cap_keeps_the_head_and_counts_the_rest() -> None:
    cap = OutputCap(10)
    for _ in range(1000):
        cap.feed(b"abcdefgh")
    assert cap.head == b"abcdefghab"
    assert cap.dropped == 8000 - 10
    assert cap.text() == "abcdefghab\n[... truncated 7990 bytes]"
    cap = OutputCap(0)
    cap.feed(b"x")
    assert cap.text() == "\n[... truncated 1 bytes]"


def _cmdline(proc: Path) -> str:
    with contextlib.suppress(OSError):
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""

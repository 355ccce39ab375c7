"""The microvm driver: prerequisites detection, and a real VM through the guest helper.

Where KVM can run a stock kernel the VM is KVM-accelerated; where it cannot
(no /dev/kvm, or a /dev/kvm without VT-x/AMD-V such as a software nested
hypervisor), ``available()`` must say False, and the same VM is booted with
QEMU's software CPU (TCG) to prove the image, the guest helper and the protocol.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from aether.node.drivers import sandbox_drivers
from aether.node.drivers.base import SandboxHandle, SandboxSpec
from aether.node.drivers.microvm import MicroVMDriver, missing_prerequisites


def test_available_only_with_every_prerequisite() -> None:
    driver = MicroVMDriver()
    missing = missing_prerequisites()
    assert driver.available() is (not missing)
    assert ("microvm" in sandbox_drivers()) is (not missing)
    if not os.path.exists("/dev/kvm"):
        assert driver.available() is False, "no /dev/kvm, so no microVMs"
        assert any("/dev/kvm" in m for m in missing)


@pytest.fixture(scope="module")
def driver() -> MicroVMDriver:
    kvm = MicroVMDriver()
    if kvm.available():
        return kvm
    tools = missing_prerequisites("tcg")
    if tools and os.path.exists("/dev/kvm"):
        pytest.fail("microVM tools are needed: " + "; ".join(tools))
    if tools:
        pytest.fail(
            "no /dev/kvm here, and QEMU, a kernel and busybox are needed to test the "
            "microvm driver in software: " + "; ".join(tools)
        )
    return MicroVMDriver(accel="tcg")


@pytest.fixture(scope="module")
def node_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="aether-vm-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vm(driver: MicroVMDriver, node_dir: Path) -> AsyncIterator[SandboxHandle]:
    spec = SandboxSpec(id="vm1", name="vm", root=node_dir / "vm1", memory_mb=128)
    handle = await driver.create(spec)
    yield handle
    await driver.delete(handle)


@pytest.mark.asyncio(loop_scope="module")
async def test_echo_hello_in_a_real_vm(driver: MicroVMDriver, vm: SandboxHandle) -> None:
    result = await driver.execute(vm, "echo", ["hello"], timeout=60)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "hello\n", "")
    kernel = await driver.execute(vm, "uname", ["-r"], timeout=60)
    assert kernel.stdout.strip() != os.uname().release  # the guest's kernel, not the host's


@pytest.mark.asyncio(loop_scope="module")
async def test_workspace_stdin_args_and_exit_codes(
    driver: MicroVMDriver, vm: SandboxHandle
) -> None:
    write = await driver.execute(vm, "sh", ["-c", "echo kept > note; pwd"], timeout=60)
    assert write.stdout == "/workspace\n"
    assert (vm.workspace / "note").read_text() == "kept\n"  # on the node, outliving the VM
    read = await driver.execute(vm, "cat", ["note"], timeout=60)
    assert read.stdout == "kept\n"
    piped = await driver.execute(vm, "wc", ["-c"], timeout=60, stdin=b"x" * 100_000)
    assert piped.stdout.strip() == "100000"
    args = ["two words", "'q'", "$HOME", ""]
    echoed = await driver.execute(vm, "printf", ["[%s]", *args], timeout=60, env={"A": "b"})
    assert echoed.stdout == "[two words]['q'][$HOME][]"
    failed = await driver.execute(vm, "sh", ["-c", "echo oops >&2; exit 3"], timeout=60)
    assert (failed.exit_code, failed.stderr) == (3, "oops\n")
    missing = await driver.execute(vm, "no-such-command", [], timeout=60)
    assert missing.exit_code == 127


@pytest.mark.asyncio(loop_scope="module")
async def test_timeout_kills_the_command_not_the_vm(
    driver: MicroVMDriver, vm: SandboxHandle
) -> None:
    began = time.monotonic()
    result = await driver.execute(vm, "sh", ["-c", "sleep 300 & sleep 300"], timeout=2)
    assert result.timed_out and result.killed_reason == "timeout"
    assert time.monotonic() - began < 30
    after = await driver.execute(vm, "sh", ["-c", "ps -o args | grep -c '^sleep 300'"], timeout=60)
    assert after.stdout.strip() == "0", after.stdout  # nothing it started is left running


@pytest.mark.asyncio(loop_scope="module")
async def test_output_is_capped(driver: MicroVMDriver, vm: SandboxHandle) -> None:
    result = await driver.execute(
        vm, "head", ["-c", "3000000", "/dev/zero"], timeout=120, output_limit=1000
    )
    assert result.stdout_truncated
    assert result.stdout.endswith("\n[... truncated 2999000 bytes]")


@pytest.mark.asyncio(loop_scope="module")
async def test_reattach_boots_the_vm_again(
    driver: MicroVMDriver, vm: SandboxHandle, node_dir: Path
) -> None:
    await driver.execute(vm, "sh", ["-c", "echo before > restart"], timeout=60)
    restarted = MicroVMDriver(accel=driver.accel)  # a new node process
    handle = restarted.load("vm1", node_dir / "vm1")
    assert handle is not None and handle.spec == vm.spec
    try:
        result = await restarted.execute(handle, "cat", ["restart"], timeout=120)
        assert result.stdout == "before\n"
    finally:
        for booted in list(restarted._vms.values()):
            await booted.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_memory_is_the_vms_and_network_is_off(
    driver: MicroVMDriver, vm: SandboxHandle
) -> None:
    grab = "b = [bytearray(100 * 2**20) for _ in range(6)]"
    result = await driver.execute(vm, "python3", ["-c", grab], timeout=120)
    assert result.exit_code != 0
    assert result.killed_reason == "memory limit"
    links = await driver.execute(vm, "cat", ["/proc/net/dev"], timeout=60)
    interfaces = {line.split(":")[0].strip() for line in links.stdout.splitlines()[2:]}
    assert interfaces == {"lo"}

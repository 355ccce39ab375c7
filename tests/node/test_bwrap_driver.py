"""The sandboxed instance driver with real bubblewrap sandboxes (no mocks)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether.node.drivers import instance_drivers
from aether.node.drivers.base import LaunchSpec
from aether.node.drivers.bwrap import BwrapDriver
from aether.node.drivers.bwrap_instances import SandboxedInstance
from aether.node.drivers.process import ProcessDriver

SECRET = "s3cret-join-token-for-the-test"


@pytest.fixture
def driver() -> BwrapDriver:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is needed for this test: apt-get install bubblewrap")
    driver = BwrapDriver()
    assert driver.available(), driver.reason
    return driver


class Instance:
    """An instance's directory laid out as the runner does: the node's, with app/ and run/."""

    def __init__(self, data: Path, name: str, driver: BwrapDriver) -> None:
        self.root = data / "instances" / name
        self.app = self.root / "app"
        self.run = self.root / "run"
        self.log = self.root / "output.log"
        self.id = f"instances/n1/{name}"
        self.uid = driver.host_uid(self.id)
        for path in (self.app, self.run):
            path.mkdir(parents=True, mode=0o700)
            if self.uid is not None:
                os.chown(path, self.uid, self.uid)

    def spec(
        self, command: str, *, env: dict[str, str] | None = None, memory_mb: int = 64
    ) -> LaunchSpec:
        return LaunchSpec(
            command=command,
            cwd=self.app,
            env=env or {},
            log_path=self.log,
            instance_id=self.id,
            root=self.root,
            writable=(self.app, self.run),
            memory_mb=memory_mb,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "node"
    (data / "instances").mkdir(parents=True)
    (data / "node.secret").write_text(SECRET)
    yield data


async def run(driver: BwrapDriver, inst: Instance, script: str) -> tuple[int, str]:
    handle = await driver.start(inst.spec(f"sh -c '{script}'"))
    async with asyncio.timeout(30):
        code = await handle.wait()
    return code, inst.output()


async def wait_output(inst: Instance, text: str) -> None:
    deadline = time.monotonic() + 10
    while text not in inst.output():
        assert time.monotonic() < deadline, inst.output()
        await asyncio.sleep(0.02)


async def test_runs_as_an_unprivileged_uid_with_no_capabilities(
    driver: BwrapDriver, data: Path
) -> None:
    inst = Instance(data, "a@1-0", driver)
    code, out = await run(driver, inst, "id -u; grep CapEff /proc/self/status")
    assert code == 0, out
    uid = int(out.split()[0])
    assert uid != 0
    if os.geteuid() == 0:
        assert uid == inst.uid
    assert "CapEff:\t0000000000000000" in out


async def test_sees_nothing_of_the_node_or_other_instances(
    driver: BwrapDriver, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AETHER_JOIN_TOKEN", SECRET)  # the node process holds a secret
    other = Instance(data, "b@1-0", driver)
    (other.app / "theirs.txt").write_text(SECRET)
    inst = Instance(data, "a@1-0", driver)
    script = (
        f"cat ../../../node.secret {other.app}/theirs.txt {data}/node.secret; "
        f"cat /proc/{os.getpid()}/environ; cat /proc/*/environ; "
        "echo listing: $(ls ../../ /instance); echo pids: $(ls /proc | grep ^[0-9])"
    )
    _, out = await run(driver, inst, script)
    assert SECRET not in out
    assert out.count("No such file or directory") >= 4, out  # the three files, the node's pid
    listing = out.split("listing:")[1].split("\n")[0]
    assert "b@1-0" not in listing and "node.secret" not in listing, listing
    pids = out.split("pids:")[1].split()
    assert str(os.getpid()) not in pids
    assert len(pids) <= 5, pids  # init, the shell, its subshell, ls, grep: its own only


async def test_environment_holds_only_what_the_node_gave(
    driver: BwrapDriver, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AETHER_JOIN_TOKEN", SECRET)
    monkeypatch.setenv("PYTHONPATH", "/somewhere/of/the/node")
    inst = Instance(data, "a@1-0", driver)
    env = {"GREETING": "hi", "AETHER_STATE_DIR": str(inst.app / "state")}
    handle = await driver.start(inst.spec("env", env=env))
    assert await handle.wait() == 0
    seen = dict(line.split("=", 1) for line in inst.output().splitlines())
    assert set(seen) - {"PWD", "SHLVL", "_", "OLDPWD"} == {
        "PATH",
        "HOME",
        "LANG",
        "GREETING",
        "AETHER_STATE_DIR",
    }
    assert seen["HOME"] == "/instance/app"
    assert seen["AETHER_STATE_DIR"] == "/instance/app/state"  # host paths are rewritten
    assert seen["GREETING"] == "hi"


async def test_system_is_read_only_and_its_own_directories_writable(
    driver: BwrapDriver, data: Path
) -> None:
    inst = Instance(data, "a@1-0", driver)
    script = (
        "for p in /usr/x /etc/x /x /instance/x; do touch $p 2>/dev/null && echo WROTE $p; done; "
        "touch /instance/app/mine /instance/run/ack /tmp/t && echo wrote-own; pwd"
    )
    _, out = await run(driver, inst, script)
    assert "WROTE" not in out
    assert "wrote-own" in out and "/instance/app" in out
    assert (inst.app / "mine").exists() and (inst.run / "ack").exists()
    if inst.uid is not None:
        assert (inst.app / "mine").stat().st_uid == inst.uid


async def test_exit_codes_pass_through(driver: BwrapDriver, data: Path) -> None:
    inst = Instance(data, "a@1-0", driver)
    assert (await run(driver, inst, "exit 7"))[0] == 7
    assert (await run(driver, inst, "exit 0"))[0] == 0


async def test_pid_is_the_app_and_stop_sends_sigterm_first(driver: BwrapDriver, data: Path) -> None:
    inst = Instance(data, "a@1-0", driver)
    script = 'trap "echo got-term; exit 3" TERM; echo ready; while :; do sleep 0.05; done'
    handle = await driver.start(inst.spec(f"sh -c '{script}'"))
    assert isinstance(handle, SandboxedInstance)
    await wait_output(inst, "ready")
    status = Path(f"/proc/{handle.pid}/status").read_text()
    assert "Name:\tsh" in status  # the app, not bwrap: signals and telemetry reach it
    if inst.uid is not None:
        assert f"Uid:\t{inst.uid}" in status
    assert await driver.stop(handle, grace=5) == 3
    assert "got-term" in inst.output()


async def test_stop_kills_what_ignores_sigterm(driver: BwrapDriver, data: Path) -> None:
    inst = Instance(data, "a@1-0", driver)
    script = 'trap "" TERM; echo ready; while :; do sleep 0.05; done'
    handle = await driver.start(inst.spec(f"sh -c '{script}'"))
    await wait_output(inst, "ready")
    start = time.monotonic()
    code = await driver.stop(handle, grace=0.5)
    assert code != 0
    assert time.monotonic() - start < 5
    deadline = time.monotonic() + 5
    while Path(f"/proc/{handle.pid}").exists() and "\nState:\tZ" not in _status(handle.pid):
        assert time.monotonic() < deadline, "the app outlived stop()"
        await asyncio.sleep(0.02)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ""


@pytest.mark.parametrize(
    ("memory_mb", "alloc_mb", "held"), [(64, 200, True), (64, 900, False), (1024, 900, True)]
)
async def test_memory_limit_is_rlimit_data_with_a_floor(
    driver: BwrapDriver, data: Path, memory_mb: int, alloc_mb: int, held: bool
) -> None:
    inst = Instance(data, "a@1-0", driver)
    command = f'python3 -c "b = bytearray({alloc_mb} << 20); print(42)"'
    handle = await driver.start(inst.spec(command, memory_mb=memory_mb))
    code = await handle.wait()
    if held:
        assert code == 0 and "42" in inst.output(), inst.output()
    else:
        assert code != 0 and "MemoryError" in inst.output(), inst.output()


def test_a_node_without_bubblewrap_offers_no_driver_and_says_why() -> None:
    missing = BwrapDriver(bwrap="/nonexistent/bwrap")
    assert not missing.available()
    assert "bubblewrap could not run" in missing.reason or "not installed" in missing.reason


def test_the_unsandboxed_policy_is_explicit_and_reported() -> None:
    drivers, isolation, detail = instance_drivers("none")
    assert isinstance(drivers["process"], ProcessDriver) and isolation == "none"
    assert "--isolation none" in detail
    with pytest.raises(ValueError, match="bwrap or none"):
        instance_drivers("chroot")

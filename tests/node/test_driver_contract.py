"""One contract for every driver this machine runs (``aether.node.drivers.base``).

Each test runs once per available driver with the ability it is about: the
``instances`` ability (``process``, ``bwrap``) and the ``sandboxes`` and
``reattach`` abilities (``process``, ``bwrap``, and ``microvm`` where KVM
works; its TCG run is in test_sandbox_microvm.py). What one driver does beyond
the contract (isolation, limits) is tested in that driver's own file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from aether.node.drivers import all_drivers, instance_drivers, sandbox_drivers
from aether.node.drivers.base import LaunchSpec, RunsInstances, RunsSandboxes, SandboxSpec
from aether.node.drivers.bwrap import BwrapDriver
from aether.node.drivers.process import ProcessDriver
from aether.node.drivers.spawn import PATH

NODE_SECRET = "AETHER_CONTRACT_SECRET"


def _instance_drivers() -> list[RunsInstances]:
    drivers: list[RunsInstances] = [ProcessDriver()]
    bwrap = BwrapDriver()
    if bwrap.available():
        drivers.append(bwrap)
    return drivers


INSTANCE_DRIVERS = _instance_drivers()
SANDBOX_DRIVERS = list(sandbox_drivers().values())


def test_the_contract_covers_the_drivers_this_machine_runs() -> None:
    """bubblewrap is part of `make setup`: without it the contract would cover less."""
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is needed: apt-get install bubblewrap")
    assert [d.name for d in INSTANCE_DRIVERS] == ["process", "bwrap"]
    assert {"process", "bwrap"} <= {d.name for d in SANDBOX_DRIVERS}
    for driver in all_drivers().values():
        assert driver.abilities <= {"instances", "sandboxes", "reattach", "checkpoint"}
        assert ("instances" in driver.abilities) == isinstance(driver, (ProcessDriver, BwrapDriver))


def test_the_isolation_policy_picks_an_instance_driver() -> None:
    sandboxed, isolation, _ = instance_drivers("bwrap")
    assert isolation == "bwrap" and sandboxed["process"].isolated
    plain, isolation, _ = instance_drivers("none")
    assert isolation == "none" and not plain["process"].isolated


# -- the instances ability ------------------------------------------------------------------


class Place:
    """An instance's directory as the runner lays it out: app/ (the cwd) and run/."""

    def __init__(self, root: Path, driver: RunsInstances) -> None:
        self.root = root
        self.app = root / "app"
        self.run = root / "run"
        self.log = root / "output.log"
        self.id = f"instances/contract/{root.name}"
        uid = driver.host_uid(self.id)
        root.mkdir(mode=0o700)
        for path in (self.app, self.run):
            path.mkdir(mode=0o700)
            if uid is not None:
                os.chown(path, uid, uid)

    def spec(self, command: str, **env: str) -> LaunchSpec:
        return LaunchSpec(
            command=command,
            cwd=self.app,
            env=env,
            log_path=self.log,
            instance_id=self.id,
            root=self.root,
            writable=(self.app, self.run),
            memory_mb=64,
        )

    def wait_for(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.exists() and text in self.log.read_text():
                return
            time.sleep(0.02)
        raise AssertionError(f"{text!r} never appeared in {self.log.read_text()!r}")


@pytest.fixture(params=INSTANCE_DRIVERS, ids=lambda d: d.name)
def runs_instances(request: pytest.FixtureRequest) -> RunsInstances:
    driver: RunsInstances = request.param
    return driver


async def test_an_instance_gets_its_spec_env_only_and_its_exit_code(
    runs_instances: RunsInstances, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NODE_SECRET, "the node's own")
    place = Place(tmp_path / "i1", runs_instances)
    handle = await runs_instances.start(
        place.spec("""sh -c 'env; echo "cwd=$(pwd)"; exit 7'""", GREETING="hi")
    )
    assert await handle.wait() == 7
    out = place.log.read_text()
    assert "GREETING=hi" in out
    assert f"PATH={PATH}" in out
    assert NODE_SECRET not in out and "PYTHONPATH" not in out
    assert "cwd=" in out and out.split("cwd=")[1].strip().endswith("/app")


async def test_stop_asks_with_sigterm_first(runs_instances: RunsInstances, tmp_path: Path) -> None:
    place = Place(tmp_path / "i2", runs_instances)
    script = "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done"
    handle = await runs_instances.start(place.spec(f'sh -c "{script}"'))
    await asyncio.to_thread(place.wait_for, "ready")
    assert await runs_instances.stop(handle, grace=5) == 3
    assert "got-term" in place.log.read_text()


async def test_stop_kills_what_ignores_sigterm(
    runs_instances: RunsInstances, tmp_path: Path
) -> None:
    place = Place(tmp_path / "i3", runs_instances)
    handle = await runs_instances.start(
        place.spec("sh -c \"trap '' TERM; echo ready; while :; do sleep 0.05; done\"")
    )
    await asyncio.to_thread(place.wait_for, "ready")
    started = time.monotonic()
    code = await runs_instances.stop(handle, grace=0.5)
    assert code != 0 and handle.returncode is not None
    assert time.monotonic() - started < 5


# -- the sandboxes and reattach abilities --------------------------------------------------


@pytest.fixture(params=SANDBOX_DRIVERS, ids=lambda d: d.name)
def runs_sandboxes(request: pytest.FixtureRequest) -> RunsSandboxes:
    driver: RunsSandboxes = request.param
    return driver


def _spec(tmp_path: Path, id: str) -> SandboxSpec:
    return SandboxSpec(id=id, name=id, root=tmp_path / id)


async def test_a_workspace_persists_and_creating_again_is_harmless(
    runs_sandboxes: RunsSandboxes, tmp_path: Path
) -> None:
    box = await runs_sandboxes.create(_spec(tmp_path, "s1"))
    first = await runs_sandboxes.execute(box, "sh", ["-c", "echo kept > f; pwd"], timeout=30)
    assert first.exit_code == 0, first.stderr
    again = await runs_sandboxes.create(_spec(tmp_path, "s1"))
    second = await runs_sandboxes.execute(again, "cat", ["f"], timeout=30)
    assert second.stdout == "kept\n"
    await runs_sandboxes.delete(box)


async def test_commands_get_argv_verbatim_and_a_spec_only_env(
    runs_sandboxes: RunsSandboxes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NODE_SECRET, "the node's own")
    box = await runs_sandboxes.create(_spec(tmp_path, "s2"))
    args = ["a b", "$HOME", "'quoted'"]
    echoed = await runs_sandboxes.execute(box, "printf", ["%s\\n", *args], timeout=30)
    assert echoed.stdout.splitlines() == args
    env = await runs_sandboxes.execute(box, "env", [], timeout=30, env={"GIVEN": "yes"})
    assert "GIVEN=yes" in env.stdout and NODE_SECRET not in env.stdout
    await runs_sandboxes.delete(box)


async def test_a_run_past_its_timeout_is_killed(
    runs_sandboxes: RunsSandboxes, tmp_path: Path
) -> None:
    box = await runs_sandboxes.create(_spec(tmp_path, "s3"))
    result = await runs_sandboxes.execute(box, "sleep", ["30"], timeout=1)
    assert result.timed_out and result.killed_reason == "timeout"
    assert result.duration < 15
    await runs_sandboxes.delete(box)


async def test_output_is_capped(runs_sandboxes: RunsSandboxes, tmp_path: Path) -> None:
    box = await runs_sandboxes.create(_spec(tmp_path, "s4"))
    result = await runs_sandboxes.execute(
        box, "sh", ["-c", "head -c 100000 /dev/zero | tr '\\0' x"], timeout=30, output_limit=1000
    )
    assert result.stdout_truncated and result.stdout.startswith("x" * 1000)
    assert "truncated 99000 bytes" in result.stdout
    await runs_sandboxes.delete(box)


async def test_a_sandbox_is_found_again_after_a_restart_and_deleted(
    runs_sandboxes: RunsSandboxes, tmp_path: Path
) -> None:
    box = await runs_sandboxes.create(_spec(tmp_path, "s5"))
    await runs_sandboxes.execute(box, "sh", ["-c", "echo kept > f"], timeout=30)
    restarted = type(runs_sandboxes)()  # a node restart: a new driver, the same files
    found = restarted.load("s5", tmp_path / "s5")
    assert found is not None and found.id == "s5"
    assert (await restarted.execute(found, "cat", ["f"], timeout=30)).stdout == "kept\n"
    assert restarted.load("someone-else", tmp_path / "s5") is None
    await restarted.delete(found)
    assert not (tmp_path / "s5").exists()
    assert restarted.load("s5", tmp_path / "s5") is None

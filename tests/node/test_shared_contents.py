"""Shipped files shared between a node's instances by hard links (``node.contents``):
a redeploy writes only what changed, and no instance can change what another reads.
Real runners, real bubblewrap sandboxes, each instance as its own uid."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from aether.artifacts import pack_bytes
from aether.client import ApiClient
from aether.core.lifecycle import Command
from aether.model.app import AppSpec
from aether.model.cluster import InstanceRecord
from aether.node.drivers.base import LaunchSpec
from aether.node.drivers.bwrap import BwrapDriver
from aether.node.runner import InstanceRunner, RunnerConfig
from aether.ports import free_port


@pytest.fixture
def driver() -> BwrapDriver:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is needed for this test: apt-get install bubblewrap")
    driver = BwrapDriver()
    assert driver.available(), driver.reason
    if os.geteuid() != 0:
        pytest.fail("this test runs instances as their own uids: run the suite as root")
    return driver


def _artifact(config: RunnerConfig, tree: dict[str, str]) -> str:
    """Pack ``tree`` into the node's artifact cache, as a download would leave it."""
    src = config.data_dir.parent / ("src-" + hashlib.sha256(repr(tree).encode()).hexdigest()[:8])
    for rel, text in tree.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    data = pack_bytes(src)
    hex_digest = hashlib.sha256(data).hexdigest()
    cache = config.data_dir / "artifacts"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"{hex_digest}.tar.gz").write_bytes(data)
    return f"sha256:{hex_digest}"


def _runner(
    config: RunnerConfig, driver: BwrapDriver, client: ApiClient, version: int, digest: str
) -> InstanceRunner:
    record = InstanceRecord(
        app="web",
        version=version,
        n=0,
        node="n1",
        tenant="t",
        deployment_id=f"d{version}",
        digest=digest,
        spec=AppSpec(name="web", start="true", stateful=True, state_dir="data"),
        command=Command.LOAD,
        request_id=f"r{version}",
    )
    return InstanceRunner(record, client, driver, config, lambda: None)


async def _sh(driver: BwrapDriver, runner: InstanceRunner, script: str) -> int:
    spec = LaunchSpec(
        command=f"sh -c '{script}'",
        cwd=runner.app_dir,
        env={},
        log_path=runner.log_path,
        instance_id=runner.instance_id,
        root=runner.root,
        writable=(runner.app_dir, runner.run_dir),
        memory_mb=64,
    )
    handle = await driver.start(spec)
    async with asyncio.timeout(30):
        return await handle.wait()


async def test_a_redeploy_links_unchanged_files_that_no_instance_can_change(
    tmp_path: Path, driver: BwrapDriver
) -> None:
    config = RunnerConfig(tmp_path / "node", "127.0.0.1")
    v1 = {"server.js": "one\n", "lib.js": "lib 1\n", "data/seed": "seed\n"}
    v2 = {**v1, "lib.js": "lib 2\n"}
    async with ApiClient(f"http://127.0.0.1:{free_port()}", "unused") as client:
        old = _runner(config, driver, client, 1, _artifact(config, v1))
        new = _runner(config, driver, client, 2, _artifact(config, v2))
        for runner in (old, new):
            await runner._fetch_and_extract()
            runner._hand_over()
        shipped_old, shipped_new = old.app_dir / "server.js", new.app_dir / "server.js"
        assert shipped_old.stat().st_ino == shipped_new.stat().st_ino  # linked, not written
        assert (new.app_dir / "lib.js").read_text() == "lib 2\n"
        assert shipped_new.stat().st_uid == 0 and shipped_new.stat().st_mode & 0o777 == 0o444
        # its state directory and its directories are the instance's own
        uid = driver.host_uid(new.instance_id)
        assert (new.app_dir / "data/seed").stat().st_uid == uid
        assert new.app_dir.stat().st_uid == uid

        # inside its sandbox, the new instance cannot write the shared file in place...
        assert await _sh(driver, new, "echo tampered >> server.js") != 0
        # ...but may replace it in its own tree, and write new files and its state
        replace = "cat server.js > s.tmp && echo mine >> s.tmp && mv -f s.tmp server.js"
        code = await _sh(driver, new, f"{replace} && echo x > new.txt && echo y >> data/seed")
        assert code == 0, new.log_path.read_text()
        assert shipped_new.read_text() == "one\nmine\n"
        assert shipped_old.read_text() == "one\n"  # the other instance reads what it shipped with

        # once an instance is gone, the contents only it linked are pruned
        await old.remove()
        names = {p.name for p in config.contents.root.iterdir()}
        assert hashlib.sha256(b"lib 1\n").hexdigest() not in names
        assert hashlib.sha256(b"lib 2\n").hexdigest() in names

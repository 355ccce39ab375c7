"""The process driver with real child processes."""

from __future__ import annotations

import time
from pathlib import Path

from aether.node.drivers.base import LaunchSpec
from aether.node.drivers.process import ProcessDriver


async def test_runs_in_cwd_with_env_and_logs(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    driver = ProcessDriver()
    handle = await driver.start(
        LaunchSpec(
            command='echo "$GREETING from $(pwd)"',
            cwd=tmp_path,
            env={"GREETING": "hi"},
            log_path=log,
        )
    )
    assert await handle.wait() == 0
    assert log.read_text().strip() == f"hi from {tmp_path}"


async def test_stop_sends_sigterm_first(tmp_path: Path) -> None:
    driver = ProcessDriver()
    script = "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done"
    log = tmp_path / "out.log"
    handle = await driver.start(LaunchSpec(command=f'sh -c "{script}"', cwd=tmp_path, log_path=log))
    deadline = time.monotonic() + 5
    while "ready" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    code = await driver.stop(handle, grace=5)
    assert code == 3
    assert "got-term" in log.read_text()


async def test_stop_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    driver = ProcessDriver()
    log = tmp_path / "out.log"
    handle = await driver.start(
        LaunchSpec(
            command="sh -c \"trap '' TERM; echo ready; while :; do sleep 0.05; done\"",
            cwd=tmp_path,
            log_path=log,
        )
    )
    deadline = time.monotonic() + 5
    while "ready" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    start = time.monotonic()
    code = await driver.stop(handle, grace=0.5)
    assert code == -9
    assert time.monotonic() - start < 5

"""Slice hosts as real processes for the tests: a package written to a directory,
``python -m aether.slices.host`` started in it on a free port."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from aether.ports import free_port
from aether.slices import wire

KEY = "control-key-for-tests"


@dataclass
class Host:
    process: subprocess.Popen[bytes]
    port: int
    root: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as answer:
                status: int = answer.status
                return status
        except urllib.error.HTTPError as exc:
            return exc.code

    def stop(self, timeout: float = 10) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return self.process.returncode, err.decode()


def write_package(root: Path, name: str, source: str) -> None:
    package = root / name
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "slice.py").write_text(textwrap.dedent(source))


def start_host(
    root: Path,
    target: str,
    *,
    app: str | None = None,
    wait: bool = True,
    env: dict[str, str] | None = None,
) -> Host:
    port = free_port()
    environ = {
        **os.environ,
        "AETHER_SLICE": target,
        "PORT": str(port),
        "AETHER_SLICE_CONTROL_KEY": KEY,
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    if app:
        environ["AETHER_APP"] = app
    process = subprocess.Popen(
        [sys.executable, "-m", "aether.slices.host"],
        cwd=root,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    host = Host(process, port, root)
    if wait:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"host exited: {host.stop()[1]}")
            try:
                if host.health() == 200:
                    return host
            except OSError:
                pass
            time.sleep(0.05)
        host.stop()
        raise AssertionError("the host did not become healthy")
    return host


async def wait_in_flight(host: Host, entry: str, count: int = 1, timeout: float = 10) -> None:
    """Until ``host`` has ``count`` calls of ``entry`` in flight (asked with ``$stats``)."""
    connection = await wire.Connection.open("127.0.0.1", host.port)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = await connection.call("$stats", key=KEY)
            if stats[entry]["in_flight"] >= count:
                return
            await asyncio.sleep(0.02)
    finally:
        await connection.close()
    raise AssertionError(f"{entry} never had {count} calls in flight")


async def wait_draining(host: Host, timeout: float = 10) -> None:
    """Until ``host`` took the SIGTERM: its port stops taking connections (the open
    ones are still answered)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await asyncio.to_thread(host.health) == 503:
                return
        except OSError:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the host never started draining")

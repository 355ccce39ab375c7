"""The ``aether`` command run as a user runs it: a subprocess with a clean environment
(no ``AETHER_*`` nor ``XDG_*`` of the test runner) and a home of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["cli_env", "run_aether"]


def cli_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The runner's environment without ``AETHER_*``/``XDG_*``, with ``home``'s
    session and config directories (and ``extra``)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AETHER_") and not k.startswith("XDG_")
    }
    env.update({"XDG_CACHE_HOME": str(home / "cache"), "XDG_CONFIG_HOME": str(home / "config")})
    env.update(extra or {})
    return env


def run_aether(
    home: Path,
    *args: str,
    server: str | None = None,
    token: str | None = None,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``aether ARGS`` (with ``--server``/``--token`` when given) in ``home``."""
    command = [sys.executable, "-m", "aether", *args]
    if server is not None:
        command += ["--server", server]
    if token is not None:
        command += ["--token", token]
    return subprocess.run(
        command,
        env=cli_env(home, env),
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
    )
